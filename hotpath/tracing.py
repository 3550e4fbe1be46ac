"""OpenTelemetry at the edge: one TracerProvider per process, the contrib instrumentations (FastAPI, redis, httpx,
urllib3 under the minio SDK, gRPC under pymilvus) and the trace ids of the log lines, installed once at start.

Why only here: library code (taskkit/tracing.py, index_worker/store.py) takes `opentelemetry.trace.get_tracer`, a
no-op until this module sets a provider. So with tracing off nothing is installed — no ASGI middleware, no wrapped
client, no log hook — and no request pays for it (the membership fast path included); `setup` decides once.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MODES = ("auto", "off", "otlp", "console")
# `auto` means `otlp` when one of these names a collector (the OTel SDK's own variables), else `off`.
OTLP_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
# Probes and scrapes make no spans (regexes the FastAPI instrumentation matches against the URL).
EXCLUDED_URLS = "/livez$,/readyz$,/metrics$"


@dataclass
class Tracing:
    """What `setup` installed in this process."""

    mode: str
    provider: Any
    instrumentors: list[Any] = field(default_factory=list)
    apps: list[Any] = field(default_factory=list)


_state: Tracing | None = None


def resolve_mode(mode: str, environ: Mapping[str, str]) -> str:
    """`off`, `otlp` or `console` for the HOTPATH_TRACING value `mode` (OTEL_SDK_DISABLED=true wins: off)."""
    if mode not in MODES:
        raise ValueError(f"HOTPATH_TRACING={mode!r}: use one of {', '.join(MODES)}")
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return "off"
    if mode == "auto":
        return "otlp" if any(environ.get(v) for v in OTLP_ENDPOINT_VARS) else "off"
    return mode


def current() -> Tracing | None:
    """This process's tracing, or None when it is off."""
    return _state


def setup(process: str, mode: str = "auto", *, exporter: Any = None,
          environ: Mapping[str, str] | None = None) -> Tracing | None:
    """Install tracing for this process (idempotent; None when the mode resolves to off, and then nothing is
    imported or installed). `process` names the service (`hotpath-<process>`, unless OTEL_SERVICE_NAME or
    OTEL_RESOURCE_ATTRIBUTES name it). `exporter` (tests, benchmarks) replaces the mode's exporter and is called
    synchronously. OTEL_TRACES_EXPORTER=none keeps the spans, the propagation and the log ids, exporting nothing.
    """
    global _state
    if _state is not None:
        return _state
    env = os.environ if environ is None else environ
    resolved = "memory" if exporter is not None else resolve_mode(mode, env)
    if resolved == "off":
        return None
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(resource=_resource(process), sampler=_sampler(env))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif env.get("OTEL_TRACES_EXPORTER", "").strip().lower() != "none":
        provider.add_span_processor(BatchSpanProcessor(_exporter(resolved)))
    trace.set_tracer_provider(provider)
    _state = Tracing(mode=resolved, provider=provider, instrumentors=_instrument(provider))
    from hotpath import logs

    logs.trace_fields = trace_fields
    return _state


def instrument_app(app: Any) -> None:
    """Trace the FastAPI `app`'s requests (W3C traceparent taken from each, or a trace started) when tracing is on;
    a no-op when it is off. Its middleware is outermost, so the membership fast path is traced too."""
    if _state is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, tracer_provider=_state.provider, excluded_urls=EXCLUDED_URLS,
                                       exclude_spans=["receive", "send"])
    _state.apps.append(app)


def shutdown() -> None:
    """Flush and stop the exporter and remove the instrumentations (tests and benchmarks; processes rely on the
    SDK's own flush at exit). The global provider stays set: OpenTelemetry allows setting it once per process."""
    global _state
    state, _state = _state, None
    if state is None:
        return
    from hotpath import logs

    logs.trace_fields = None
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    for app in state.apps:
        FastAPIInstrumentor.uninstrument_app(app)
    for inst in state.instrumentors:
        inst.uninstrument()
    state.provider.shutdown()


def trace_fields() -> dict[str, str] | None:
    """{"trace_id", "span_id"} of the current span (hex, as in traceparent), or None outside a span."""
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}


def _resource(process: str) -> Any:
    from importlib.metadata import version

    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    res = Resource.create({"hotpath.process": process, "service.version": version("hotpath")})
    if str(res.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        res = res.merge(Resource({SERVICE_NAME: f"hotpath-{process}"}))
    return res


def _sampler(environ: Mapping[str, str]) -> Any:
    """OTEL_TRACES_SAMPLER when set (the SDK reads it); else parent-based, every root sampled except a CLIENT span
    with no parent: a worker's queue poll, a health tick, a pool's ping — background calls that would each be a
    one-span trace."""
    if environ.get("OTEL_TRACES_SAMPLER"):
        return None
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, ParentBased, Sampler, SamplingResult
    from opentelemetry.trace import SpanKind

    class NoOrphanClients(Sampler):
        def should_sample(self, parent_context: Any, trace_id: int, name: str, kind: Any = None,
                          attributes: Any = None, links: Sequence[Any] | None = None, trace_state: Any = None) -> Any:
            if kind is SpanKind.CLIENT:
                return SamplingResult(Decision.DROP)
            return ALWAYS_ON.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

        def get_description(self) -> str:
            return "NoOrphanClients"

    return ParentBased(root=NoOrphanClients())


def _exporter(mode: str) -> Any:
    if mode == "console":  # one JSON object per line on stdout (stderr holds the JSON log lines)
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(out=sys.stdout, formatter=lambda span: span.to_json(indent=None) + "\n")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # endpoint, headers, timeout, compression: the standard OTEL_EXPORTER_OTLP_* variables


def _instrument(provider: Any) -> list[Any]:
    from opentelemetry.instrumentation.grpc import GrpcInstrumentorClient
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor

    done = []
    for inst in (RedisInstrumentor(), HTTPXClientInstrumentor(), URLLib3Instrumentor(), GrpcInstrumentorClient()):
        inst.instrument(tracer_provider=provider)
        done.append(inst)
    return done


__all__ = ["MODES", "Tracing", "current", "instrument_app", "resolve_mode", "setup", "shutdown", "trace_fields"]
