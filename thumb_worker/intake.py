"""The storage-event intake: the wire model of MinIO's bucket-notification webhook body, the shared-secret token
check, the producer function that turns events into `thumb` jobs, and `POST /v1/storage-events` for the API.

Why a route builder taking its error type and responses: the worker package owns its intake, yet must not import
cacheman; the API process (hotpath/api.py) passes in its Unauthorized problem and problem responses, so one error
contract covers every route. The caller is MinIO, not a tenant's service: a shared bearer token (the webhook
target's `auth_token`), compared in constant time, instead of a JWT. Events that are not a creation or removal in
the uploads bucket are acknowledged and listed as ignored: answering them with an error would make MinIO resend
them from its queue_dir for ever. (No `from __future__ import annotations`: FastAPI reads the route's types.)
"""

import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote_plus

from fastapi import APIRouter, Depends, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, field_validator
from redis.exceptions import RedisError

from taskkit.errors import QueueUnavailable
from taskkit.producer import JobSpec, Producer
from thumb_worker.producer import (
    QUEUE,
    REMOVE_TASK,
    THUMBNAIL_TASK,
    normalize_etag,
    removal_job,
    thumbnail_job,
)

PATH = "/v1/storage-events"
MAX_RECORDS = 1000
KEY_MAX_BYTES = 1024  # S3's limit on an object key, UTF-8

EXAMPLE = {
    "EventName": "s3:ObjectCreated:Put",
    "Key": "uploads/photos/beach+day+%C3%A9t%C3%A9.jpg",
    "Records": [{
        "eventVersion": "2.0", "eventSource": "minio:s3", "awsRegion": "", "eventTime": "2026-11-26T12:00:00.000Z",
        "eventName": "s3:ObjectCreated:Put", "userIdentity": {"principalId": "minio"},
        "requestParameters": {"principalId": "minio", "region": "", "sourceIPAddress": "10.0.0.5"},
        "responseElements": {"x-amz-request-id": "17B2C6D1E6A0F9B2", "x-minio-origin-endpoint": "http://minio:9000"},
        "s3": {
            "s3SchemaVersion": "1.0", "configurationId": "Config",
            "bucket": {"name": "uploads", "ownerIdentity": {"principalId": "minio"}, "arn": "arn:aws:s3:::uploads"},
            "object": {"key": "photos%2Fbeach+day+%C3%A9t%C3%A9.jpg", "size": 1843200,
                       "eTag": "5fc7298143efe1276d39a3466d4e255f", "contentType": "image/jpeg",
                       "userMetadata": {"content-type": "image/jpeg"}, "sequencer": "17B2C6D1E6B3C2A1"},
        },
        "source": {"host": "10.0.0.5", "port": "", "userAgent": "MinIO (linux; amd64) minio-go/v7.0.70"},
    }],
}


class StorageObject(BaseModel):
    """`s3.object` of a record. MinIO sends the key query-escaped (`+` for a space, `%2F` for `/`)."""

    key: str = Field(min_length=1, description="The object key, query-escaped as MinIO sends it; decoded on arrival.")
    size: int | None = Field(None, ge=0, description="Object size, bytes (absent on removals).")
    eTag: str | None = Field(None, description="The object's ETag (absent on removals); the job is keyed by it.")
    contentType: str | None = Field(None, description="Content type the object was uploaded with (informative only: "
                                                      "the worker trusts the bytes, not this).")
    versionId: str | None = None

    @field_validator("key")
    @classmethod
    def _unescape(cls, v: str) -> str:
        try:
            key = unquote_plus(v, errors="strict")
        except UnicodeDecodeError:
            raise ValueError("the key's %-escapes are not UTF-8") from None
        if not key:
            raise ValueError("the key is empty once unescaped")
        if len(key.encode()) > KEY_MAX_BYTES:
            raise ValueError(f"the key is {len(key.encode())} bytes in UTF-8; S3 keys are at most {KEY_MAX_BYTES}")
        return key


class StorageBucket(BaseModel):
    name: str = Field(min_length=1, max_length=255)


class StorageS3(BaseModel):
    bucket: StorageBucket
    object: StorageObject


class StorageRecord(BaseModel):
    """One event (MinIO's notification record, the shape of S3's event notifications); other members are kept
    out of the model, not refused."""

    eventName: str = Field(min_length=1, max_length=200, description="`s3:ObjectCreated:Put`, `s3:ObjectRemoved:Delete`, …")
    s3: StorageS3


class StorageEvents(BaseModel):
    """MinIO's webhook body: `Records` (MinIO sends one per request), with `EventName` and `Key` (bucket/key) beside."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE]})

    EventName: str | None = None
    Key: str | None = None
    Records: list[StorageRecord] = Field(min_length=1, max_length=MAX_RECORDS, description=f"1 to {MAX_RECORDS} events.")


class StorageAccepted(BaseModel):
    """202: what was enqueued, and why the other records were not."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"accepted": 1, "duplicates": 0, "ignored": 0, "reasons": []}]})

    accepted: int = Field(ge=0, description="Jobs enqueued now (a thumbnail job per created object, a removal job per removed one).")
    duplicates: int = Field(ge=0, description="Created objects whose job (same bucket, key and ETag) is queued or was just done.")
    ignored: int = Field(ge=0, description="Records acknowledged and dropped: other events, other buckets.")
    reasons: list[str] = Field(description="Why each ignored record was dropped (`record 0: …`).")


@dataclass(frozen=True, slots=True)
class Decision:
    """What one record asks for: a thumbnail job, a removal job, or nothing (and why)."""

    action: Literal["thumbnail", "remove", "ignore"]
    bucket: str
    key: str
    etag: str = ""
    reason: str = ""


def classify(record: StorageRecord, uploads_bucket: str) -> Decision:
    """Sort one record: `s3:ObjectCreated:*` → thumbnail, `s3:ObjectRemoved:*` → removal, in the uploads bucket
    only; everything else (accesses, replication, other buckets) → ignored with a reason. The `s3:` prefix is
    optional (S3 itself sends `ObjectCreated:Put`)."""
    name = record.eventName
    bucket, obj = record.s3.bucket.name, record.s3.object
    kind = name.removeprefix("s3:").split(":", 1)[0]
    if kind not in ("ObjectCreated", "ObjectRemoved"):
        return Decision("ignore", bucket, obj.key, reason=f"event {name} is neither a creation nor a removal")
    if bucket != uploads_bucket:
        return Decision("ignore", bucket, obj.key, reason=f"bucket {bucket!r} is not the uploads bucket "
                                                          f"{uploads_bucket!r} (HOTPATH_UPLOADS_BUCKET)")
    if kind == "ObjectRemoved":
        return Decision("remove", bucket, obj.key)
    etag = normalize_etag(obj.eTag or "")
    if not etag:
        return Decision("ignore", bucket, obj.key, reason=f"{name} of {obj.key!r} carries no eTag to key its job by")
    return Decision("thumbnail", bucket, obj.key, etag)


async def enqueue_storage_events(producer: Producer, events: StorageEvents | Mapping[str, Any], uploads_bucket: str, *,
                                 backpressure: bool = True) -> StorageAccepted:
    """Enqueue the jobs a webhook body asks for: one `thumbnail` job per object created in `uploads_bucket` (keyed
    by bucket, key and ETag, so a replay is a duplicate), one `remove_thumbnails` job per removed object.

    For a service that forwards MinIO events itself (a dict is validated: pydantic's ValidationError). Each kind
    is enqueued in one Redis round trip, all or nothing; raises QueueFull(retry_after) over the `thumb` queue's
    high watermark and QueueUnavailable when its Redis does not answer (re-sending the body is then safe)."""
    if not isinstance(events, StorageEvents):
        events = StorageEvents.model_validate(events)
    thumbs: list[JobSpec] = []
    removals: list[JobSpec] = []
    reasons: list[str] = []
    for i, record in enumerate(events.Records):
        d = classify(record, uploads_bucket)
        if d.action == "thumbnail":
            thumbs.append(thumbnail_job(d.bucket, d.key, d.etag))
        elif d.action == "remove":
            removals.append(removal_job(d.bucket, d.key))
        else:
            reasons.append(f"record {i}: {d.reason}")
    accepted = duplicates = 0
    try:
        for task, jobs in ((THUMBNAIL_TASK, thumbs), (REMOVE_TASK, removals)):
            if jobs:
                done = await producer.enqueue_many(task, jobs, queue=QUEUE, backpressure=backpressure)
                accepted, duplicates = accepted + done.accepted, duplicates + done.duplicates
    except (RedisError, OSError) as exc:
        raise QueueUnavailable(QUEUE, f"its Redis did not answer ({type(exc).__name__}: {exc})") from exc
    return StorageAccepted(accepted=accepted, duplicates=duplicates, ignored=len(reasons), reasons=reasons)


def token_auth(expected: str, *, error: Callable[..., Exception]) -> Callable[..., Any]:
    """The route's dependency: the request must carry `Authorization: Bearer <expected>` (how MinIO sends its
    target's `auth_token`), compared in constant time. `error(message, missing=bool)` builds the 401 to raise
    (the API's Unauthorized problem). An empty `expected` refuses every request: the webhook is off."""
    scheme = HTTPBearer(auto_error=False, scheme_name="StorageWebhookToken",
                        description="The shared secret HOTPATH_STORAGE_WEBHOOK_TOKEN (MinIO's notify_webhook auth_token).")
    want = expected.encode()

    async def storage_webhook_token(request: Request,
                                    credentials: HTTPAuthorizationCredentials | None = Security(scheme)) -> None:
        if not want:
            raise error("the storage-event webhook is off: set HOTPATH_STORAGE_WEBHOOK_TOKEN, and the same value as "
                        "the auth_token of MinIO's notify_webhook target")
        if credentials is None:
            if request.headers.get("authorization"):
                raise error("Authorization header must be `Bearer <token>`")
            raise error("missing bearer token (MinIO sends its notify_webhook auth_token as `Authorization: Bearer …`)",
                        missing=True)
        if not hmac.compare_digest(credentials.credentials.encode(), want):
            raise error("the bearer token is not the storage webhook token: MinIO's notify_webhook auth_token must "
                        "equal HOTPATH_STORAGE_WEBHOOK_TOKEN")

    return storage_webhook_token


def build_router(*, auth_dependency: Callable[..., Any], producer: Callable[[Request], Producer], uploads_bucket: str,
                 responses: dict[int | str, Any] | None = None) -> APIRouter:
    """`POST /v1/storage-events` → 202 StorageAccepted. `auth_dependency` checks the webhook token (`token_auth`);
    `producer(request)` is the API's Producer; `responses` documents the errors."""
    router = APIRouter(tags=["thumbnails"], responses=responses or {})

    @router.post(PATH, status_code=202, response_model=StorageAccepted, dependencies=[Depends(auth_dependency)],
                 summary="MinIO bucket notifications: enqueue thumbnail work for created and removed uploads.",
                 description="Point a MinIO `notify_webhook` target here (README: Thumbnails). A created object of "
                             "the uploads bucket becomes one `thumbnail` job (a replayed event is a duplicate), a "
                             "removed one a `remove_thumbnails` job; other events and buckets are acknowledged and "
                             "counted as ignored. Over the `thumb` queue's high watermark: 429 and Retry-After, "
                             "nothing enqueued (MinIO keeps the event in its queue_dir and sends it again).")
    async def post_storage_events(body: StorageEvents, request: Request) -> StorageAccepted:
        try:
            return await enqueue_storage_events(producer(request), body, uploads_bucket)
        except ValueError as exc:  # more jobs than the queue's high watermark could ever hold
            raise RequestValidationError([{"loc": ("body", "Records"), "type": "too_long",
                                           "msg": f"{exc} (HOTPATH_THUMB_QUEUE_HIGH)"}]) from None

    return router
