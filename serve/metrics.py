"""The app's own Prometheus metrics, recorded through Ray Serve's metrics API.

Ray exports them on each node's metrics endpoint (`ray.init(_metrics_export_port=...)`, or the port
Ray picked: `ray metrics launch-prometheus` and the Ray dashboard know it) with a `ray_` prefix, and
counters get `_total` (`ray_speechguide_requests_total`). Serve adds the tags `application`,
`deployment` and `replica` to every one of them. `cluster/grafana-speechguide.json` charts these names;
`EXPORTED` lists them as Prometheus sees them.

Metric objects are made lazily, in the process that records (a replica), never at import.
Recording outside a Ray worker does nothing, so the units that use these helpers run without Ray.

Two things about Ray's export shape what is recorded here. Ray exports a histogram's `_sum` from
bucket midpoints, not from the values observed: quantiles come from the buckets, and exact means
from counters (rows and forwards are counted, so rows per forward = rate(rows) / rate(forwards)).
And Ray drops a gauge that has not been set for a while, so the ingress's gauges (work in flight,
throughput, registry errors) are set again every `GAUGE_PERIOD_S` by a thread of the replica.
"""

from __future__ import annotations

import logging
import threading
import time
from functools import lru_cache
from typing import Any, Awaitable, Callable, Optional

from ray.serve.metrics import Counter, Gauge, Histogram

PREFIX = "speechguide_"
# Seconds: a request takes 0.1 s to minutes; a step a few ms to seconds; the vocoder tens of ms.
LATENCY_BUCKETS_S = [0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0]
STEP_BUCKETS_S = [0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]
ROWS_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
GAUGE_PERIOD_S = 2.0

log = logging.getLogger("ray.serve")

# Names as the Prometheus endpoint exports them (what dashboards and alerts query).
EXPORTED = {
    "requests": "ray_speechguide_requests_total",
    "request_seconds": "ray_speechguide_request_seconds",
    "stage_seconds": "ray_speechguide_stage_seconds",
    "step_seconds": "ray_speechguide_step_seconds",
    "vocode_seconds": "ray_speechguide_vocode_seconds",
    "admission": "ray_speechguide_admission_total",
    "work_in_flight": "ray_speechguide_work_in_flight_units",
    "requests_sampling": "ray_speechguide_requests_sampling",
    "throughput": "ray_speechguide_throughput_units_per_second",
    "forwards": "ray_speechguide_forwards_total",
    "forward_rows": "ray_speechguide_forward_rows_total",
    "forward_calls": "ray_speechguide_forward_calls_total",
    "rows_per_forward": "ray_speechguide_rows_per_forward",
    "forward_seconds": "ray_speechguide_forward_seconds",
    "registry_reloads": "ray_speechguide_registry_reloads_total",
    "registry_errors": "ray_speechguide_registry_errors",
}

GENERATE_PATH = "/v1/generate"


def outcome(status: int, refused: bool = False) -> str:
    """The `outcome` tag of a finished /v1/generate request, from its HTTP status."""
    if status < 400:
        return "ok"
    if refused:
        return "rejected"  # admission by work said no (503 with Retry-After)
    if status == 401:
        return "unauthorized"
    if status == 503:
        return "unavailable"  # a deployment down or at capacity, or sampling past its deadline
    if status < 500:
        return "invalid"
    return "error"


class IngressMetrics:
    """What the ingress records: requests by outcome and guide kind, latencies, admission, vocoder time."""

    def __init__(self) -> None:
        self.requests = Counter(
            PREFIX + "requests", description="POST /v1/generate requests by outcome and guide kind.", tag_keys=("outcome", "guide_kind")
        )
        self.request_seconds = Histogram(
            PREFIX + "request_seconds", description="End-to-end time of /v1/generate inside the ingress.",
            boundaries=LATENCY_BUCKETS_S, tag_keys=("outcome", "guide_kind"),
        )
        self.stage_seconds = Histogram(
            PREFIX + "stage_seconds", description="Time of each stage of an answered request (validate, sampling, scores, vocode).",
            boundaries=LATENCY_BUCKETS_S, tag_keys=("stage", "guide_kind"),
        )
        self.step_seconds = Histogram(
            PREFIX + "step_seconds", description="Sampling time per sampler step of an answered request.",
            boundaries=STEP_BUCKETS_S, tag_keys=("guide_kind",),
        )
        self.vocode_seconds = Histogram(
            PREFIX + "vocode_seconds", description="Vocoder time per answered request.", boundaries=LATENCY_BUCKETS_S, tag_keys=("vocoder",)
        )
        self.admission = Counter(PREFIX + "admission", description="Admission decisions (admitted, refused).", tag_keys=("decision",))
        self.work_in_flight = Gauge(PREFIX + "work_in_flight_units", description="Work sampling on this replica (samples x denoiser evaluations left).")
        self.requests_sampling = Gauge(PREFIX + "requests_sampling", description="Requests sampling on this replica.")
        self.throughput = Gauge(PREFIX + "throughput_units_per_second", description="This replica's measured throughput (admission's estimate).")
        self.registry_reloads = Counter(PREFIX + "registry_reloads", description="Registry aliases that moved and were loaded.")
        self.registry_errors = Gauge(PREFIX + "registry_errors", description="Registry aliases or refs that do not resolve or load now.")

    def request(self, status: int, seconds: float, guide_kind: str, refused: bool) -> None:
        tags = {"outcome": outcome(status, refused), "guide_kind": guide_kind}
        self.requests.inc(1, tags=tags)
        self.request_seconds.observe(seconds, tags=tags)

    def admission_decision(self, admitted: bool) -> None:
        self.admission.inc(1, tags={"decision": "admitted" if admitted else "refused"})

    def follow(self, admission: Any, registry: Any = None) -> None:
        """Keep this replica's gauges current: `admission` (an AdmissionController) and, when the app
        follows a registry, its RegistryWatch, read every GAUGE_PERIOD_S by a daemon thread."""
        self._followed = (admission, registry)
        if getattr(self, "_thread", None) is None:
            self._thread = threading.Thread(target=self._publish_forever, name="speechguide-metrics", daemon=True)
            self._thread.start()

    def publish(self) -> None:
        admission, registry = self._followed
        state = admission.describe()
        self.work_in_flight.set(state["backlog_units"])
        self.requests_sampling.set(state["in_flight"])
        self.throughput.set(state["units_per_s"])
        if registry is not None:
            self.registry_errors.set(len(registry.errors))

    def _publish_forever(self) -> None:
        while True:
            try:
                self.publish()
            except Exception as exc:  # a read racing a change: the next period publishes again
                log.debug("metrics: could not publish gauges: %s: %s", type(exc).__name__, exc)
            time.sleep(GAUGE_PERIOD_S)

    def answered(self, guide_kind: str, timings_ms: dict, steps: int, vocoder: str) -> None:
        """Stage times of a request answered 200 (its `timings_ms`, the same figures the client sees)."""
        for stage in ("validate", "sampling", "scores", "vocode"):
            if stage in timings_ms:
                self.stage_seconds.observe(timings_ms[stage] / 1e3, tags={"stage": stage, "guide_kind": guide_kind})
        if steps > 0 and "sampling" in timings_ms:
            self.step_seconds.observe(timings_ms["sampling"] / 1e3 / steps, tags={"guide_kind": guide_kind})
        if "vocode" in timings_ms:
            self.vocode_seconds.observe(timings_ms["vocode"] / 1e3, tags={"vocoder": vocoder})

    def registry_reloaded(self, changes: int) -> None:
        """After a registry refresh: the aliases and refs that moved (and were loaded)."""
        if changes:
            self.registry_reloads.inc(changes)


@lru_cache(maxsize=1)
def ingress_metrics() -> IngressMetrics:
    """This process's ingress metrics (made on first use, in the replica)."""
    return IngressMetrics()


class ForwardMetrics:
    """What a model deployment records per forward: rows and calls merged into it, and its time."""

    def __init__(self) -> None:
        self.forwards = Counter(PREFIX + "forwards", description="Forwards (merged batches) run.")
        self.rows = Counter(PREFIX + "forward_rows", description="Rows (samples) run in forwards.")
        self.calls = Counter(PREFIX + "forward_calls", description="Step calls (requests' calls) run in forwards.")
        self.rows_per_forward = Histogram(
            PREFIX + "rows_per_forward", description="Rows (samples) merged into one forward.", boundaries=ROWS_BUCKETS
        )
        self.seconds = Histogram(PREFIX + "forward_seconds", description="Time of one merged forward.", boundaries=STEP_BUCKETS_S)

    def __call__(self, calls: int, rows: int, seconds: float) -> None:
        self.forwards.inc(1)
        self.rows.inc(rows)
        self.calls.inc(calls)
        self.rows_per_forward.observe(rows)
        self.seconds.observe(seconds)


@lru_cache(maxsize=1)
def forward_metrics() -> ForwardMetrics:
    """This process's forward metrics (one model deployment per replica process)."""
    return ForwardMetrics()


def observe_requests(app: Any) -> None:
    """Count and time every POST /v1/generate of the FastAPI `app`, whatever its answer.

    The route sets `request.state.guide_kind` once the body is parsed and `request.state.refused`
    when admission refuses it; a request that raised past every handler counts as a 500."""

    @app.middleware("http")
    async def _observe(request: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        if request.url.path != GENERATE_PATH or request.method != "POST":
            return await call_next(request)
        t0 = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            state = request.state
            ingress_metrics().request(
                status, time.perf_counter() - t0, getattr(state, "guide_kind", "unparsed"), getattr(state, "refused", False)
            )
