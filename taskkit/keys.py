"""Key layout: every Redis key taskkit writes, derived from one configurable prefix.

Why one prefix: tests isolate themselves with a per-test prefix and production can run several
deployments on one Redis. ARQ's own keys (`arq:job:<id>`, `arq:in-progress:<id>`, `arq:retry:<id>`,
`arq:result:<id>`) have a fixed prefix in ARQ, so taskkit puts the prefix into the ARQ *queue name* and
into every *job id* instead: `SCAN MATCH arq:*:<prefix>*` finds exactly one deployment's ARQ keys.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix

DEFAULT_PREFIX = "hp:tk:"
_MAX_KEY_IN_ID = 80


@dataclass(frozen=True)
class Keys:
    """Names of all keys for one prefix (e.g. "hp:tk:"); pure string arithmetic, no I/O."""

    prefix: str = DEFAULT_PREFIX

    # --- ARQ's side -----------------------------------------------------------------------------
    def arq_queue(self, queue: str) -> str:
        """The ARQ queue (sorted set job_id → run-at ms) of a taskkit queue."""
        return f"{self.prefix}q:{queue}"

    def queue_of_arq(self, arq_queue: str) -> str:
        return arq_queue.removeprefix(f"{self.prefix}q:")

    def new_job_id(self, queue: str) -> str:
        return f"{self.prefix}{queue}:{uuid.uuid4().hex}"

    @staticmethod
    def idem_token(key: str) -> str:
        """An idempotency key as stored in job ids and marker keys: itself, or a hash when long."""
        if len(key) > _MAX_KEY_IN_ID:
            return "h:" + hashlib.sha1(key.encode()).hexdigest()
        return key

    def idempotent_job_id(self, queue: str, key: str) -> str:
        """A job id derived from an idempotency key, so ARQ's own job-id dedup covers queued/retrying jobs."""
        return f"{self.prefix}{queue}:k:{self.idem_token(key)}"

    def idem_token_of_job(self, queue: str, job_id: str) -> str | None:
        """The idempotency token a job id carries (None for a job enqueued without a key)."""
        head = f"{self.prefix}{queue}:k:"
        return job_id[len(head):] if job_id.startswith(head) else None

    @staticmethod
    def job(job_id: str) -> str:
        return job_key_prefix + job_id

    @staticmethod
    def in_progress(job_id: str) -> str:
        return in_progress_key_prefix + job_id

    @staticmethod
    def result(job_id: str) -> str:
        return result_key_prefix + job_id

    @staticmethod
    def arq_retry(job_id: str) -> str:
        return retry_key_prefix + job_id

    # --- taskkit's own ----------------------------------------------------------------------------
    @property
    def queues(self) -> str:
        """Set of known queue names (written by enqueue and worker start)."""
        return f"{self.prefix}queues"

    def retry_index(self, queue: str) -> str:
        """Sorted set job_id → next run (ms) of jobs waiting for another attempt."""
        return f"{self.prefix}retry:{queue}"

    def retry_record(self, queue: str, job_id: str) -> str:
        return f"{self.prefix}retry:{queue}:j:{job_id}"

    def dlq_index(self, queue: str) -> str:
        """Sorted set job_id → death time (ms) of dead-lettered jobs."""
        return f"{self.prefix}dlq:{queue}"

    def dlq_record_prefix(self, queue: str) -> str:
        return f"{self.prefix}dlq:{queue}:j:"

    def dlq_record(self, queue: str, job_id: str) -> str:
        return self.dlq_record_prefix(queue) + job_id

    def idempotency(self, queue: str, token: str) -> str:
        """The "recently done" marker of an idempotency token (see `idem_token`)."""
        return f"{self.prefix}idem:{queue}:{token}"

    def backpressure(self, queue: str) -> str:
        """Hash: `closed` (hysteresis state), `rate` (jobs/s drained by live workers)."""
        return f"{self.prefix}bp:{queue}"

    def stats(self, queue: str) -> str:
        """Hash of lifetime counters: enqueued, rejected, completed, retried, dead."""
        return f"{self.prefix}stats:{queue}"

    def workers(self, queue: str) -> str:
        """Sorted set worker_id → last heartbeat (ms)."""
        return f"{self.prefix}workers:{queue}"

    def health(self, queue: str, worker_id: str) -> str:
        return f"{self.prefix}health:{queue}:{worker_id}"

    def aimd(self, name: str) -> str:
        return f"{self.prefix}aimd:{name}"

    @property
    def audit(self) -> str:
        """Stream of operator actions (requeue/drop/purge)."""
        return f"{self.prefix}audit"

    def arq_scan_pattern(self) -> str:
        """SCAN pattern matching this prefix's ARQ job/result/retry/in-progress keys."""
        return f"arq:*:{self.prefix}*"
