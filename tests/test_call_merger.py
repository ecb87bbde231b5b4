"""The ingress-side step merger without Ray: concurrent requests' calls share sends, cohorts stay whole,
and a failed send fails only the calls it carried."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from guidance.diffusion.samplers import SamplerConfig
from serve.merge import CallMerger
from serve.steps import drive_sampler


def test_requests_in_flight_together_share_one_send_per_step():
    """16 samplers started 1 ms apart against a 20 ms deployment: after the first send (which leaves before
    the others arrive) every step goes out as one send for all 16, and every sampler gets its own rows back."""
    sizes: list[int] = []
    active = {"n": 0}

    async def send(items):
        sizes.append(len(items))
        await asyncio.sleep(0.02)
        return [x * 0.5 for x, _ in items]

    merger = CallMerger(send, max_items=64, max_in_flight=1, wait_s=0.005, expected=lambda: active["n"])

    async def denoise(x, sigma):
        return await merger.submit((x, sigma))

    async def one(i):
        await asyncio.sleep(0.001 * i)
        active["n"] += 1
        try:
            out, stats = await drive_sampler(torch.full((1, 1, 2, 2), float(i + 1)), SamplerConfig(steps=4, kind="euler"), i, None, denoise, None)
        finally:
            active["n"] -= 1
        return out, stats

    async def main():
        return await asyncio.gather(*(one(i) for i in range(16)))

    results = asyncio.run(main())
    assert sum(sizes) == 16 * 4 and max(sizes) == 16
    assert sizes.count(16) >= len(sizes) - 2, sizes
    # each request's rows came back to it: x_{k+1} = x_k + (D - x_k)/sigma * dsigma keeps rows proportional to their start
    finals = torch.stack([out.flatten()[0] for out, _ in results])
    assert torch.allclose(finals / finals[0], torch.arange(1, 17, dtype=finals.dtype), rtol=1e-5)
    assert all(stats.denoiser_calls == 4 for _, stats in results)


def test_max_items_and_in_flight_are_respected():
    seen, in_flight, peak = [], {"now": 0}, {"max": 0}

    async def send(items):
        in_flight["now"] += 1
        peak["max"] = max(peak["max"], in_flight["now"])
        seen.append(list(items))
        await asyncio.sleep(0.01)
        in_flight["now"] -= 1
        return [i * 10 for i in items]

    async def main():
        merger = CallMerger(send, max_items=3, max_in_flight=2, wait_s=0)
        return await asyncio.gather(*(merger.submit(i) for i in range(10)))

    assert asyncio.run(main()) == [i * 10 for i in range(10)]
    assert all(len(batch) <= 3 for batch in seen) and sorted(i for b in seen for i in b) == list(range(10))
    assert peak["max"] == 2


def test_a_failed_send_fails_only_its_own_calls():
    async def send(items):
        await asyncio.sleep(0.01)
        if 0 in items:
            raise RuntimeError("replica lost")
        return items

    async def main():
        merger = CallMerger(send, max_items=2, max_in_flight=1, wait_s=0)
        return await asyncio.gather(*(merger.submit(i) for i in range(5)), return_exceptions=True)

    out = asyncio.run(main())
    assert isinstance(out[0], RuntimeError) and "replica lost" in str(out[0])
    assert out[1:] == [1, 2, 3, 4]  # later sends went on
    with pytest.raises(ValueError):
        CallMerger(send, max_items=0)


@pytest.mark.parametrize("cohorts,expected_size", [(1, 16), (2, 8)])
def test_cohorts_split_the_requests_into_equal_sends_in_flight_at_once(cohorts, expected_size):
    """16 samplers, 2 sends in flight: one cohort keeps them in one send per step (the largest forward);
    two cohorts split them into two sends of 8 that are in flight together (one per model replica)."""
    sizes: list[int] = []
    in_flight, peak = {"now": 0}, {"max": 0}
    active = {"n": 0}

    async def send(items):
        sizes.append(len(items))
        in_flight["now"] += 1
        peak["max"] = max(peak["max"], in_flight["now"])
        await asyncio.sleep(0.02)
        in_flight["now"] -= 1
        return [x * 0.5 for x, _ in items]

    merger = CallMerger(send, max_items=64, max_in_flight=2, wait_s=0.05, expected=lambda: active["n"], cohorts=cohorts)

    async def denoise(x, sigma):
        return await merger.submit((x, sigma))

    async def one(i):
        active["n"] += 1  # all 16 register before the first call, as requests admitted together do
        await asyncio.sleep(0)
        try:
            return await drive_sampler(torch.full((1, 1, 2, 2), float(i + 1)), SamplerConfig(steps=6, kind="euler"), i, None, denoise, None)
        finally:
            active["n"] -= 1

    async def main():
        return await asyncio.gather(*(one(i) for i in range(16)))

    results = asyncio.run(main())
    assert sum(sizes) == 16 * 6 and max(sizes) == expected_size
    assert sizes.count(expected_size) >= len(sizes) - 2, sizes
    if cohorts == 2:
        assert peak["max"] == 2  # the two cohorts travel at once
    finals = torch.stack([out.flatten()[0] for out, _ in results])
    assert torch.allclose(finals / finals[0], torch.arange(1, 17, dtype=finals.dtype), rtol=1e-5)


def test_cohorts_must_fit_the_sends_in_flight():
    from serve.config import StepMerging

    with pytest.raises(ValueError, match="cohorts"):
        CallMerger(lambda items: items, max_in_flight=1, cohorts=2)
    with pytest.raises(ValueError, match="cannot exceed max_in_flight"):
        StepMerging(cohorts=3, max_in_flight=2)
    assert StepMerging().cohorts == 1


def test_a_short_cohort_goes_at_once_when_every_caller_is_accounted_for():
    """15 requests in 2 cohorts: sends of 8 and 7. Once the 7 are pending and the 8 are in flight, nobody else
    can submit before an answer, so the 7 go at once instead of waiting wait_s at every step."""

    async def main():
        merger = CallMerger(lambda items: items, max_items=64, max_in_flight=2, wait_s=10.0, expected=lambda: 15, cohorts=2)
        merger.freed = merger.oldest = time.monotonic()
        merger.pending = [(i, None) for i in range(7)]
        waiting_alone = merger._cohort_waiting()
        merger.items_in_flight = 8
        return waiting_alone, merger._cohort_waiting()

    waiting_alone, waiting_with_the_rest_in_flight = asyncio.run(main())
    assert waiting_alone > 9.0  # 8 callers unaccounted for: wait for them
    assert waiting_with_the_rest_in_flight == 0.0


def test_calls_within_the_window_share_one_send_and_a_failure_stays_with_its_send():
    """`WindowMerger`, the ingress's merger of end-of-sampling calls (scores, vocoding): 16 callers ending in
    the same event-loop turn travel as one send with each answer back to its caller; a caller 50 ms later goes
    in its own send; a send that fails fails its callers only, and a caller that gave up is not sent."""
    from serve.merge import WindowMerger

    sends: list[list[int]] = []

    async def send(items):
        sends.append(list(items))
        await asyncio.sleep(0.01)
        if -1 in items:
            raise RuntimeError("scorer down")
        return [x * 10 for x in items]

    merger = WindowMerger(send, window_s=0.005, max_items=64)

    async def late(x, delay):
        await asyncio.sleep(delay)
        return await merger.submit(x)

    async def main():
        together = await asyncio.gather(*(merger.submit(i) for i in range(16)), late(99, 0.05))
        failed = await asyncio.gather(merger.submit(-1), merger.submit(5), return_exceptions=True)
        gave_up = asyncio.ensure_future(merger.submit(7))
        await asyncio.sleep(0)
        gave_up.cancel()
        after = await merger.submit(8)
        return together, failed, after

    together, failed, after = asyncio.run(main())
    assert together == [i * 10 for i in range(16)] + [990]
    assert sends[:2] == [list(range(16)), [99]]
    assert all(isinstance(f, RuntimeError) for f in failed) and sends[2] == [-1, 5]
    assert after == 80 and sends[3] == [8]  # the cancelled 7 never travelled


def test_window_merger_sends_at_max_items_without_waiting():
    from serve.merge import WindowMerger

    sends: list[int] = []

    async def send(items):
        sends.append(len(items))
        return items

    merger = WindowMerger(send, window_s=10.0, max_items=4)

    async def main():
        return await asyncio.wait_for(asyncio.gather(*(merger.submit(i) for i in range(8))), timeout=2)

    assert asyncio.run(main()) == list(range(8)) and sends == [4, 4]
