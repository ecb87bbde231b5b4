"""The Grafana dashboard of the Serve app, generated from the metric names in `serve.metrics`.

`python -m cluster.grafana.render` rewrites `speechguide-serve.json` beside this file (import it in
Grafana: Dashboards > New > Import, then pick the Prometheus data source that scrapes Ray's metrics
endpoint). `tests/test_dashboard.py` fails while the committed file differs from a fresh render, or
while a panel queries a name that `serve.metrics.EXPORTED` does not list.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from serve.metrics import EXPORTED

OUT = Path(__file__).with_name("speechguide-serve.json")
APP = 'application=~"$application"'
DS = {"type": "prometheus", "uid": "${datasource}"}


def _rate(name: str, by: str, extra: str = "") -> str:
    return f"sum by ({by}) (rate({name}{{{APP}{extra}}}[$__rate_interval]))"


def _quantile(q: float, metric: str, by: str, extra: str = "") -> str:
    return f"histogram_quantile({q}, {_rate(EXPORTED[metric] + '_bucket', 'le, ' + by if by else 'le', extra)})"


def _per_forward(metric: str) -> str:
    """Exact mean per forward from counters (Ray's histogram sums are bucket midpoints)."""
    return f"{_rate(EXPORTED[metric], 'deployment')} / {_rate(EXPORTED['forwards'], 'deployment')}"


def _panel(title: str, targets: list[tuple[str, str]], unit: str, x: int, y: int, w: int = 12, h: int = 8, description: str = "") -> dict[str, Any]:
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]}},
        "targets": [{"datasource": DS, "expr": expr, "legendFormat": legend, "refId": chr(ord("A") + i)} for i, (expr, legend) in enumerate(targets)],
    }


def panels() -> list[dict[str, Any]]:
    """Rows of two panels: traffic, latency, batching, load and admission, vocoder and registry."""
    rows: list[tuple[str, list[tuple[str, str]], str, str]] = [
        ("Requests by outcome", [(_rate(EXPORTED["requests"], "outcome"), "{{outcome}}")], "reqps",
         "POST /v1/generate answered per second: ok, rejected (admission 503), unavailable, invalid, unauthorized, error."),
        ("Requests by guide kind", [(_rate(EXPORTED["requests"], "guide_kind"), "{{guide_kind}}")], "reqps",
         "unparsed: refused before the body was read."),
        ("End-to-end latency (answered)", [(_quantile(q, "request_seconds", "", ',outcome="ok"'), f"p{round(q * 100)}") for q in (0.5, 0.95, 0.99)], "s",
         "Inside the ingress, from the request's arrival to its answer."),
        ("Stage latency p95", [(_quantile(0.95, "stage_seconds", "stage"), "{{stage}}")], "s",
         "validate, sampling, scores, vocode: the timings_ms every answer carries."),
        ("Per-step latency", [(_quantile(q, "step_seconds", "guide_kind"), f"p{round(q * 100)} {{{{guide_kind}}}}") for q in (0.5, 0.95)], "s",
         "Sampling time over sampler steps, per answered request."),
        ("Vocoder time", [(_quantile(q, "vocode_seconds", "vocoder"), f"p{round(q * 100)} {{{{vocoder}}}}") for q in (0.5, 0.95)], "s", ""),
        ("Rows merged per forward", [(_per_forward("forward_rows"), "mean {{deployment}}"),
                                     (_quantile(0.95, "rows_per_forward", "deployment"), "p95 {{deployment}}")], "short",
         "Samples per forward of each model deployment: step batching at work (1 = none)."),
        ("Calls merged per forward", [(_per_forward("forward_calls"), "{{deployment}}")], "short",
         "Mean step calls (requests' calls) per forward."),
        ("Forward time p95", [(_quantile(0.95, "forward_seconds", "deployment"), "{{deployment}}")], "s", ""),
        ("Work in flight", [(f"sum by (replica) ({EXPORTED['work_in_flight']}{{{APP}}})", "units {{replica}}"),
                            (f"sum by (replica) ({EXPORTED['requests_sampling']}{{{APP}}})", "requests {{replica}}")], "short",
         "Per ingress replica: samples x denoiser evaluations left, and requests sampling."),
        ("Admission", [(_rate(EXPORTED["admission"], "decision"), "{{decision}}")], "reqps",
         "Admitted and refused (503 with Retry-After) per second."),
        ("Measured throughput", [(f"sum by (replica) ({EXPORTED['throughput']}{{{APP}}})", "{{replica}}")], "short",
         "Units per second each ingress replica admits by."),
        ("Registry reloads", [(f"sum(increase({EXPORTED['registry_reloads']}{{{APP}}}[$__range]))", "reloads in range")], "short",
         "Aliases that moved and were loaded (apps with args.registry)."),
        ("Registry errors", [(f"max by (replica) ({EXPORTED['registry_errors']}{{{APP}}})", "{{replica}}")], "short",
         "Aliases or refs that do not resolve or load now (the last good version is served)."),
    ]
    return [_panel(title, targets, unit, 12 * (i % 2), 8 * (i // 2), description=desc) for i, (title, targets, unit, desc) in enumerate(rows)]


def dashboard() -> dict[str, Any]:
    return {
        "title": "speechguide serve",
        "uid": "speechguide-serve",
        "description": "The speechguide Serve app: traffic, latency, step batching, admission, vocoder, registry (serve/metrics.py).",
        "tags": ["speechguide", "ray-serve"],
        "schemaVersion": 39,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "templating": {
            "list": [
                {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus", "current": {}},
                {
                    "name": "application", "label": "Serve app", "type": "query", "datasource": DS,
                    "query": {"query": f"label_values({EXPORTED['requests']}, application)", "refId": "apps"},
                    "definition": f"label_values({EXPORTED['requests']}, application)",
                    "includeAll": True, "allValue": ".*", "multi": True, "refresh": 2, "current": {},
                },
            ]
        },
        "panels": panels(),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main() -> None:
    OUT.write_text(render())
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
