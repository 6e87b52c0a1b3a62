"""Prometheus metrics for every process (kiosk app, bridge, centre, bank, fleet service).

`counter/histogram/gauge(...)` create a metric once per process (asking again returns
the same one, so apps built twice in a test do not collide) and refuse a label that
could carry a person or a score: metrics are counted by codes (outcome, reason,
infcode, stage), never by who. `mount(app)` adds `GET /metrics` in the text format.
With several uvicorn workers set PROMETHEUS_MULTIPROC_DIR (an empty directory per
service) and `/metrics` merges the workers' files (prometheus_client multiprocess mode).
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from kiosk.errors import ConfigError

REGISTRY = CollectorRegistry(auto_describe=True)
FORBIDDEN_LABELS = frozenset({
    "person", "person_id", "psn", "psn_no", "name", "patient", "id_number", "idno", "certno", "cert_no",
    "mdtrt_cert_no", "face", "template", "score", "similarity", "phone", "card", "ip",
})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_made: dict[str, Any] = {}
_lock = threading.Lock()


def _check(name: str, labels: Sequence[str]) -> None:
    bad = [lb for lb in labels if lb.lower() in FORBIDDEN_LABELS]
    if bad:
        raise ConfigError(f"metric {name}: label {bad[0]!r} could carry personal data or a score",
                          code="metric_label_forbidden", field=name)


def _make(kind: type, name: str, doc: str, labels: Sequence[str], **kw: Any) -> Any:
    _check(name, labels)
    with _lock:
        m = _made.get(name)
        if m is None:
            m = kind(name, doc, list(labels), registry=REGISTRY, **kw)
            _made[name] = m
        return m


def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
    return _make(Counter, name, doc, labels)


def histogram(name: str, doc: str, labels: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS) -> Histogram:
    return _make(Histogram, name, doc, labels, buckets=tuple(buckets))


def gauge(name: str, doc: str, labels: Sequence[str] = (), multiprocess_mode: str = "livemax") -> Gauge:
    return _make(Gauge, name, doc, labels, multiprocess_mode=multiprocess_mode)


_collectors: list[Callable[[], None]] = []


def on_scrape(fn: Callable[[], None]) -> None:
    """Run `fn` before each scrape (to set gauges from current state: peripherals, backlog)."""
    if fn not in _collectors:
        _collectors.append(fn)


def render() -> bytes:
    for fn in list(_collectors):
        try:
            fn()
        except Exception:  # noqa: BLE001 - a broken probe must not break the scrape
            counter("kiosk_metrics_probe_errors_total", "scrape-time probes that raised").inc()
    mp = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if mp:
        from prometheus_client import multiprocess

        reg = CollectorRegistry()
        multiprocess.MultiProcessCollector(reg)
        return generate_latest(reg)
    return generate_latest(REGISTRY)


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def mount(app: Any, path: str = "/metrics", *, loopback_only: bool = False) -> None:
    """Add `GET /metrics` to a FastAPI/Starlette app (not in its OpenAPI document). A terminal's
    app, bound wider for a POS, answers it to loopback clients only (the local scraper/agent)."""
    from starlette.responses import Response

    async def metrics_endpoint(request: Any) -> Response:
        if loopback_only and (request.client is None or request.client.host not in LOOPBACK):
            return Response(b"loopback only\n", status_code=403, media_type="text/plain")
        return Response(render(), media_type=CONTENT_TYPE_LATEST)

    app.add_route(path, metrics_endpoint, methods=["GET"], include_in_schema=False)


# ---------------------------------------------------------------- shared instruments
def sessions_total() -> Counter:
    return counter("kiosk_sessions_total", "payment sessions by outcome and reason code", ("outcome", "reason"))


def stage_seconds() -> Histogram:
    return histogram("kiosk_stage_seconds", "time spent per counter-flow stage", ("stage",))


session_listeners: list[Callable[[str, str], None]] = []  # e.g. the fleet agent's Counts.session


def observe_session(status: str, reason: str | None, stage_ms: dict[str, float] | None = None) -> None:
    """One finished session (the kiosk app's hook): outcome/reason counts and stage latencies,
    and every listener told (outcome, reason) - the fleet agent counts its next heartbeat so."""
    for fn in list(session_listeners):
        try:
            fn(status or "failed", reason or "")
        except Exception:  # noqa: BLE001 - counting must never break a payment
            pass
    sessions_total().labels(status or "unknown", reason or "").inc()
    if reason == "spoof_suspected":
        counter("kiosk_liveness_rejects_total", "sessions ended by a liveness reject").inc()
    elif reason in ("not_matched", "id_mismatch"):
        counter("kiosk_match_rejects_total", "sessions ended by a match reject").inc()
    elif reason == "id_locked":
        counter("kiosk_activation_lockouts_total", "activations refused by the 30-minute lock").inc()
    h = stage_seconds()
    for stage, ms in (stage_ms or {}).items():
        h.labels(str(stage)).observe(max(0.0, float(ms)) / 1000)


def service_request(service: str, infno: str, infcode: Any, seconds: float) -> None:
    """A platform transaction answered by the centre or the bank."""
    counter("kiosk_service_requests_total", "platform transactions by service, infno and infcode",
            ("service", "infno", "infcode")).labels(service, infno, str(infcode)).inc()
    histogram("kiosk_service_request_seconds", "platform transaction latency", ("service", "infno")).labels(
        service, infno).observe(seconds)


# ---------------------------------------------------------------- per-process instrumentation (one-line hooks)
def instrument_kiosk_app(app: Any, terminal: Any) -> None:
    """The kiosk app: /metrics plus gauges read at scrape time from the terminal's store
    (orders the journal shows unfinished, refunds still running). Sessions are counted by
    `observe_session`, called by the terminal when a session ends."""
    backlog = gauge("kiosk_recovery_backlog", "orders the journal shows unfinished (pending recovery)")
    refunds = gauge("kiosk_refunds_pending", "refunds started and not yet finished")
    db_errors = counter("kiosk_database_errors_total", "store reads that failed during a scrape")
    sessions_total()
    stage_seconds()

    def probe() -> None:
        try:
            rows = terminal.store.open_orders()
            backlog.set(sum(1 for r in rows if r.status in ("running", "reversing")))
            refunds.set(len(terminal.store.running_refunds()))
        except Exception:  # noqa: BLE001 - a scrape must answer even when the store does not
            db_errors.inc()

    on_scrape(probe)
    mount(app, loopback_only=True)


def instrument_service(app: Any, gateway: Any) -> None:
    """The centre and the bank: /metrics, and every platform transaction counted by infno and
    infcode with its latency (wraps `gateway.handle`, which both HTTP paths call)."""
    import time

    inner = gateway.handle
    errors = counter("kiosk_service_faults_total", "transactions that raised instead of answering", ("service",))

    def handle(raw: bytes, path_infno: str | None = None) -> Any:
        t0 = time.perf_counter()
        try:
            status, body = inner(raw, path_infno)
        except Exception:
            errors.labels(gateway.service).inc()
            raise
        code = body.get("infcode", "") if isinstance(body, dict) else ""
        service_request(gateway.service, path_infno or "", code, time.perf_counter() - t0)
        return status, body

    gateway.handle = handle
    mount(app)


def instrument_bridge(app: Any, bridge: Any) -> None:
    """The firmware bridge: /metrics with the serial link and peripheral states (1 = true)."""
    link = gauge("kiosk_bridge_link_state", "serial link state (1 for the current one)", ("state",))
    periph = gauge("kiosk_peripheral_flag", "peripheral flags from the MCU (1 = set)", ("flag",))
    stats = gauge("kiosk_bridge_link_stats", "serial link counters since start", ("counter",))

    def probe() -> None:
        st = bridge.status()
        for s in ("connected", "connecting", "disconnected"):
            link.labels(s).set(1 if st.get("state") == s else 0)
        for k, v in (st.get("peripherals") or {}).items():
            if isinstance(v, bool):
                periph.labels(k).set(1 if v else 0)
        for k, v in (st.get("stats") or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                stats.labels(k).set(v)

    on_scrape(probe)
    mount(app, loopback_only=True)
