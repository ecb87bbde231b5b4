"""serve.metrics without a cluster: the outcome tag of each answer, and recording outside Ray is harmless
(tests/test_serve.py reads the real values from a running app's Prometheus endpoint)."""

from __future__ import annotations

import pytest

from serve.metrics import ForwardMetrics, IngressMetrics, outcome


@pytest.mark.parametrize(
    "status, refused, expected",
    [(200, False, "ok"), (503, True, "rejected"), (503, False, "unavailable"), (401, False, "unauthorized"),
     (404, False, "invalid"), (422, False, "invalid"), (413, False, "invalid"), (500, False, "error")],
)
def test_outcome_of_each_answer(status, refused, expected):
    assert outcome(status, refused) == expected


def test_recording_outside_ray_does_nothing_and_raises_nothing():
    from serve.admission import AdmissionController

    metrics = IngressMetrics()
    metrics.request(200, 0.5, "noisy", False)
    metrics.answered("noisy", {"validate": 1.0, "sampling": 100.0, "scores": 2.0, "vocode": 10.0}, 10, "neural")
    metrics.admission_decision(True)
    metrics._followed = (AdmissionController(deadline_s=10, enabled=True, prior_units_per_s=20, safety_margin=0.25,
                                             ewma_alpha=0.3, window_s=2, max_retry_after_s=300), None)
    metrics.publish()
    metrics.registry_reloaded(2)
    ForwardMetrics()(calls=3, rows=12, seconds=0.01)
