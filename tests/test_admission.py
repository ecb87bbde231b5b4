"""Admission by work (serve/admission.py), without Ray: work estimates, the throughput EWMA, the
admit/refuse decision and Retry-After, and a simulated overloaded replica that holds its promises."""

from __future__ import annotations

import math

import pytest

from serve.admission import AdmissionController, Throughput, request_work, sampler_evaluations
from serve.config import Admission, AppArgs


def controller(deadline_s: float = 10.0, **kw) -> AdmissionController:
    args = {**Admission().model_dump(), "safety_margin": 0.0, "prior_units_per_s": 10.0, **kw}
    return AdmissionController(deadline_s=deadline_s, clock=lambda: pytest.fail("tests pass now explicitly"), **args)


# ---- work --------------------------------------------------------------------------------------


def test_work_counts_denoiser_evaluations():
    assert sampler_evaluations(18, "heun") == 35  # two per step, one on the last (to sigma = 0)
    assert sampler_evaluations(1, "heun") == 1
    assert sampler_evaluations(18, "euler") == 18
    assert request_work(16, 18, "heun") == 560  # the request: 16 samples at the default profile
    assert request_work(3, 10, "euler") == 30
    for bad in ((0, 5, "heun"), (1, 0, "heun"), (1, 5, "rk4")):
        with pytest.raises(ValueError):
            request_work(*bad)


def test_work_matches_what_the_sampler_calls():
    """The count is the sampler's own: drive `step_calls` and count the calls it makes."""
    import torch

    from guidance.diffusion.samplers import SamplerConfig, init_state, step_calls

    for kind in ("euler", "heun"):
        for steps in (1, 2, 7):
            config = SamplerConfig(steps=steps, kind=kind)
            state, calls = init_state(torch.zeros(1, 1, 2, 2), config, seed=0), 0
            while not state.done:
                gen = step_calls(state, config)
                x, _ = next(gen)
                while True:
                    calls += 1
                    try:
                        x, _ = gen.send(torch.zeros_like(x))
                    except StopIteration as stop:
                        state = stop.value
                        break
            assert calls == sampler_evaluations(steps, kind), (kind, steps)


# ---- throughput --------------------------------------------------------------------------------


def test_throughput_keeps_the_prior_until_a_window_is_measured_then_averages():
    t = Throughput(prior=5.0, alpha=0.5, window_s=2.0)
    t.busy(0.0)
    t.add(100, 1.0)  # half a window: not yet a measurement
    assert t.value == 5.0 and not t.measured
    t.add(100, 2.0)  # 200 units in 2 busy seconds: the first window replaces the prior
    assert t.measured and t.value == pytest.approx(100.0)
    t.add(40, 4.0)  # 20 units/s: moves half way
    assert t.value == pytest.approx(60.0)


def test_throughput_does_not_count_idle_time():
    t = Throughput(prior=1.0, alpha=1.0, window_s=2.0)
    t.busy(0.0)
    t.add(30, 1.0)
    t.idle(1.0)
    t.busy(100.0)  # 99 idle seconds: not slowness
    t.add(30, 101.0)
    assert t.value == pytest.approx(30.0)


def test_config_defaults_build_a_controller():
    args = AppArgs()
    c = AdmissionController(deadline_s=args.request_timeout_s, **args.admission.model_dump())
    assert c.enabled and c.throughput.value == args.admission.prior_units_per_s
    assert c.allowance_s == pytest.approx((1 - args.admission.safety_margin) * args.request_timeout_s)
    with pytest.raises(ValueError):
        AppArgs.model_validate({"admission": {"safety_margin": 1.0}})
    with pytest.raises(ValueError):
        AppArgs.model_validate({"admission": {"prior_units_per_s": 0}})
    with pytest.raises(ValueError):
        AppArgs.model_validate({"admission": {"enabeld": False}})


# ---- decisions ---------------------------------------------------------------------------------


def test_idle_replica_admits_anything():
    c = controller()
    job, d = c.admit(16, 1000, now=0.0)  # 1600 s of work at 10 units/s, far beyond the deadline
    assert job is not None and d.admitted and d.estimated_s == pytest.approx(1600.0)


def test_admits_while_everything_fits_and_refuses_the_request_that_would_be_late():
    c = controller()  # 10 units/s, allowance 10 s
    a, _ = c.admit(4, 20, now=0.0)  # 80 units
    b, d = c.admit(1, 10, now=0.0)  # ends after 10 rounds: 4*10 + 10 = 50 units = 5 s; a's end: 90 units = 9 s
    assert b is not None and d.estimated_s == pytest.approx(5.0)
    refused, d = c.admit(2, 20, now=0.0)  # 80 + 10 + 40 = 130 units = 13 s > 10 s, and a would end at 13 s too
    assert refused is None and not d.admitted
    assert d.estimated_s == pytest.approx(13.0) and d.backlog_units == 90 and d.work == 40
    assert d.retry_after_s == 9  # when a (9 s) is done; 3 s (its own excess) would still make a late
    assert "13 s" in d.message(10.0) and "retry in 9 s" in d.message(10.0)
    assert d.as_dict()["backlog_units"] == 90
    assert len(c.jobs) == 2 and c.admitted == 2 and c.refused == 1


def test_retry_after_of_a_request_too_late_by_itself_is_its_excess():
    c = controller()
    c.admit(1, 30, now=0.0)  # 3 s
    refused, d = c.admit(1, 95, now=0.0)  # 30 + 95 = 125 units = 12.5 s; the first one would still end at 6 s
    assert refused is None and "miss" not in d.reason
    assert d.retry_after_s == 3  # ceil(12.5 - 10): the work ahead must shrink by 2.5 s


def test_refuses_a_request_that_would_make_an_admitted_one_late():
    c = controller()
    a, _ = c.admit(1, 90, now=0.0)  # 9 s of its 10
    b, _ = c.admit(1, 5, now=0.0)  # shares 5 rounds with a: a ends at 9.5 s
    assert b is not None
    refused, d = c.admit(1, 10, now=0.0)  # itself 10 + 5 + 10 units = 2.5 s, fine; but a would end at 10.5 s
    assert refused is None and "miss their deadline" in d.reason and "beyond" not in d.reason
    assert d.estimated_s == pytest.approx(2.5)
    assert d.retry_after_s == 10  # until a is done: ceil(9.5)
    # Once b is done, a small request fits while a has time to spare, and not once a's slack is gone.
    for _ in range(5):
        c.progress(b, now=0.5)
    c.finish(b, now=0.5)
    small, _ = c.admit(1, 1, now=0.8)  # a (still 90 evaluations left here) would end at 0.8 + 9.1 s
    assert small is not None
    c.finish(small, now=0.8)
    late, d = c.admit(1, 1, now=1.0)  # a would end at 10.1 s
    assert late is None and "miss their deadline" in d.reason


def test_retry_after_is_clamped():
    c = controller(max_retry_after_s=7)
    c.admit(100, 100, now=0.0)  # 1000 s of work
    _, d = c.admit(1, 1, now=0.0)
    assert d.retry_after_s == 7
    c = controller()
    c.admit(1, 100, now=0.0)
    _, d = c.admit(1, 1, now=9.99)  # the admitted job is already late: ask to retry when it is done
    assert d.retry_after_s == 10


def test_progress_and_finish_shrink_the_backlog_and_measure():
    c = controller(window_s=1.0, ewma_alpha=1.0)
    job, _ = c.admit(4, 10, now=0.0)
    for i in range(5):
        c.progress(job, now=0.1 * (i + 1))  # 4 units per 0.1 s
    assert c.backlog_units() == 20
    for i in range(5, 10):
        c.progress(job, now=0.1 * (i + 1))
    assert c.throughput.measured and c.throughput.value == pytest.approx(40.0)
    c.finish(job, now=1.0)
    assert c.jobs == [] and c.backlog_units() == 0
    c.finish(job, now=1.0)  # twice is harmless
    assert c.describe()["in_flight"] == 0 and c.describe()["measured"]


def test_safety_margin_shortens_the_allowance():
    c = controller(safety_margin=0.5)  # allowance 5 s of the 10
    c.admit(1, 30, now=0.0)  # 3 s
    fits, _ = c.admit(1, 10, now=0.0)  # ends at 2 s; the first at 4 s
    assert fits is not None
    late, d = c.admit(1, 20, now=0.0)  # 1*20 + 10 + 20 = 50 units = 5 s... plus the first job's: 6 s
    assert late is None and d.allowance_s == pytest.approx(5.0)


def test_disabled_admits_everything_but_still_accounts():
    c = controller(enabled=False)
    for _ in range(10):
        job, d = c.admit(16, 35, now=0.0)
        assert job is not None and d.admitted
    assert c.backlog_units() == 10 * 560


# ---- a simulated replica -----------------------------------------------------------------------


def simulate(capacity: float, prior: float, deadline: float, burst: list[tuple[int, int]], retry: bool, horizon: float = 2000.0):
    """A replica whose requests advance one evaluation per round, a round costing its rows / capacity
    (what the controller assumes); clients arrive at t=0 and, with `retry`, come back after Retry-After.

    Returns (finish times of admitted requests relative to their admission, refusals, units done, end time).
    """
    c = AdmissionController(
        deadline_s=deadline, enabled=True, prior_units_per_s=prior, safety_margin=0.1, ewma_alpha=0.3,
        window_s=2.0, max_retry_after_s=600, clock=lambda: pytest.fail("now is explicit"),
    )
    now, pending = 0.0, [(0.0, rows, evals) for rows, evals in burst]
    running, latencies, refusals, units = [], [], 0, 0
    while (pending or running) and now < horizon:
        for item in sorted(p for p in pending if p[0] <= now):
            pending.remove(item)
            job, d = c.admit(item[1], item[2], now=now)
            if job is None:
                refusals += 1
                assert 1 <= d.retry_after_s <= 600
                if retry:
                    pending.append((now + d.retry_after_s, item[1], item[2]))
            else:
                running.append(job)
        if not running:
            now = min(p[0] for p in pending)
            continue
        now += sum(j.rows for j in running) / capacity  # one round
        for job in list(running):
            c.progress(job, now=now)
            units += job.rows
            if job.left == 0:
                c.finish(job, now=now)
                running.remove(job)
                latencies.append(now - job.start)
    return latencies, refusals, units, now, c


def test_simulated_burst_admits_what_fits_and_every_admitted_request_finishes_in_time():
    # The burst: 40 requests of 16 samples at 18 Heun steps, a 120 s deadline, 50 units/s.
    burst = [(16, 35)] * 40
    latencies, refusals, units, end, c = simulate(capacity=50.0, prior=20.0, deadline=120.0, burst=burst, retry=False)
    assert latencies and max(latencies) <= 0.9 * 120.0 + 1e-9  # every admitted request ends within its allowance
    assert refusals == 40 - len(latencies) > 0
    # The prior (20 units/s) is below capacity: fewer admitted than fit, none lost.
    assert len(latencies) == math.floor(20.0 * 108.0 / 560)


def test_simulated_retrying_clients_keep_the_replica_busy_and_never_time_out():
    burst = [(16, 35)] * 40 + [(1, 19)] * 30
    latencies, refusals, units, end, c = simulate(capacity=50.0, prior=20.0, deadline=120.0, burst=burst, retry=True)
    assert len(latencies) == 70 and refusals > 0  # everyone is served in the end, by coming back
    assert max(latencies) <= 0.9 * 120.0 + 1e-9  # and no admitted request overran its deadline
    assert c.throughput.measured and c.throughput.value == pytest.approx(50.0, rel=0.05)  # measured, not the prior
    assert units / end > 0.6 * 50.0  # goodput stays near capacity (idle gaps only while clients wait to retry)
