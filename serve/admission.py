"""Admission by work: answer 503 at once to a request that could not finish sampling by its deadline.

Counting requests says nothing about how long they take: one request of 16 samples at 18 Heun steps
is 560 times the work of one sample at one Euler step. So the ingress counts work instead. A **work
unit** is one sample (one row of the request's batch) through one denoiser evaluation; Heun makes
two evaluations per step except the last (whose step goes to sigma = 0), Euler one.

Each ingress replica keeps an `AdmissionController`: the requests sampling on it (rows, evaluations
left, deadline) and an exponentially weighted estimate of the work units per second it completes,
seeded with a configurable prior until a first window of busy time has been measured. The requests
sampling on a replica advance together, one evaluation each per round of merged step calls, and a
round costs about the rows in it; so a request with `e` evaluations left finishes after the rounds
that carry it, `sum_j rows_j * min(left_j, e) / throughput` seconds from now, summed over every
request j sampling there, itself included. A new request is admitted when, with it added, it and
every request already admitted still end within `(1 - safety_margin) * deadline_s` of their start;
otherwise it is refused with a Retry-After computed from the backlog. A replica with nothing in
flight always admits (a prior set too low cannot lock it out, and the request measures throughput).

No Ray and no clock of its own: every method takes `now` (seconds, monotonic), so tests drive it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional


def sampler_evaluations(steps: int, kind: Literal["euler", "heun"]) -> int:
    """Denoiser evaluations of one sampling run: Euler 1 per step, Heun 2 per step but 1 on the last."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if kind == "euler":
        return steps
    if kind == "heun":
        return 2 * steps - 1
    raise ValueError(f"sampler kind must be 'euler' or 'heun', got {kind!r}")


def request_work(rows: int, steps: int, kind: Literal["euler", "heun"]) -> int:
    """Work units of one request: rows (targets x num_samples) x denoiser evaluations."""
    if rows < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    return rows * sampler_evaluations(steps, kind)


class Throughput:
    """Work units completed per busy second: an EWMA over windows of `window_s` busy seconds.

    Time with nothing in flight does not count (an idle replica is not a slow one). Until the first
    window is complete, `value` is the prior; the first window replaces it, each later one moves it by
    `alpha` of the difference.
    """

    def __init__(self, prior: float, alpha: float, window_s: float) -> None:
        if not prior > 0 or not 0 < alpha <= 1 or not window_s > 0:
            raise ValueError(f"need prior > 0, 0 < alpha <= 1, window_s > 0; got {prior}, {alpha}, {window_s}")
        self.value = float(prior)
        self.alpha = float(alpha)
        self.window_s = float(window_s)
        self.measured = False
        self.windows = 0
        self._units = 0.0  # completed in the current window
        self._busy = 0.0  # busy seconds of the current window before `_busy_since`
        self._busy_since: Optional[float] = None  # when the replica last became busy (None: idle)

    def busy(self, now: float) -> None:
        """Work is in flight from `now` on."""
        if self._busy_since is None:
            self._busy_since = now

    def idle(self, now: float) -> None:
        """Nothing is in flight from `now` on: the window's clock stops."""
        if self._busy_since is not None:
            self._busy += max(0.0, now - self._busy_since)
            self._busy_since = None

    def add(self, units: float, now: float) -> None:
        """`units` of work completed at `now`; closes the window once it holds `window_s` busy seconds."""
        self._units += units
        busy = self._busy + (max(0.0, now - self._busy_since) if self._busy_since is not None else 0.0)
        if busy < self.window_s:
            return
        rate = self._units / busy
        self.value = rate if not self.measured else (1 - self.alpha) * self.value + self.alpha * rate
        self.measured = True
        self.windows += 1
        self._units, self._busy = 0.0, 0.0
        if self._busy_since is not None:
            self._busy_since = now


@dataclass(eq=False)
class Job:
    """One admitted request while it samples."""

    rows: int
    left: int  # denoiser evaluations still to run
    start: float  # admission time
    deadline: float  # start + the allowance: when its sampling should have ended at the latest

    @property
    def work(self) -> int:
        return self.rows * self.left


@dataclass(frozen=True)
class Decision:
    """Whether a request may sample, and the numbers behind it (also what a 503 tells the client)."""

    admitted: bool
    work: int  # the request's units
    estimated_s: float  # its estimated sampling time from now, with the work ahead of it
    allowance_s: float  # (1 - safety_margin) x deadline_s
    backlog_units: int  # work in flight before it
    units_per_s: float  # the throughput estimate used
    retry_after_s: Optional[int] = None  # set when refused
    reason: str = ""

    def message(self, deadline_s: float) -> str:
        return (
            f"over capacity: {self.reason}; this request is {self.work} units of work (samples x denoiser evaluations) "
            f"behind {self.backlog_units} in flight at about {self.units_per_s:.3g} units/s, about {self.estimated_s:.3g} s "
            f"of sampling against a {deadline_s:g} s deadline; retry in {self.retry_after_s} s"
        )

    def as_dict(self) -> dict:
        return {
            "work_units": self.work,
            "estimated_s": round(self.estimated_s, 3),
            "allowance_s": round(self.allowance_s, 3),
            "backlog_units": self.backlog_units,
            "units_per_s": round(self.units_per_s, 3),
        }


@dataclass
class AdmissionController:
    """The work in flight on one ingress replica, its measured throughput, and admit/refuse decisions.

    `admit` registers the request when it is admitted (check and registration are one synchronous
    call, so concurrent requests on one event loop cannot both take the same room); `progress` after
    each of its denoiser evaluations; `finish` when its sampling ended, whatever the outcome.
    """

    deadline_s: float
    enabled: bool
    prior_units_per_s: float
    safety_margin: float
    ewma_alpha: float
    window_s: float
    max_retry_after_s: int
    clock: Callable[[], float] = time.monotonic
    jobs: list[Job] = field(default_factory=list, init=False)
    throughput: Throughput = field(init=False)
    admitted: int = field(default=0, init=False)
    refused: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not self.deadline_s > 0 or not 0 <= self.safety_margin < 1 or self.max_retry_after_s < 1:
            raise ValueError(
                f"need deadline_s > 0, 0 <= safety_margin < 1, max_retry_after_s >= 1; "
                f"got {self.deadline_s}, {self.safety_margin}, {self.max_retry_after_s}"
            )
        self.throughput = Throughput(self.prior_units_per_s, self.ewma_alpha, self.window_s)

    @property
    def allowance_s(self) -> float:
        return (1.0 - self.safety_margin) * self.deadline_s

    def backlog_units(self) -> int:
        return sum(j.work for j in self.jobs)

    def _seconds(self, left: int, rows_new: int = 0, left_new: int = 0) -> float:
        """Estimated seconds until a job with `left` evaluations ends: the rounds carrying it, each
        costing the rows sampling then (the jobs in flight, plus a new one of `rows_new` x `left_new`)."""
        units = sum(j.rows * min(j.left, left) for j in self.jobs) + rows_new * min(left_new, left)
        return units / self.throughput.value

    def decide(self, rows: int, evaluations: int, now: Optional[float] = None) -> Decision:
        """Would a request of `rows` x `evaluations` be admitted now? (Changes nothing.)"""
        now = self.clock() if now is None else now
        if rows < 1 or evaluations < 1:
            raise ValueError(f"rows and evaluations must be at least 1, got {rows}, {evaluations}")
        allowance = self.allowance_s
        estimate = self._seconds(evaluations, rows, evaluations)
        common = dict(
            work=rows * evaluations, estimated_s=estimate, allowance_s=allowance,
            backlog_units=self.backlog_units(), units_per_s=self.throughput.value,
        )
        if not self.enabled or not self.jobs:
            return Decision(True, **common)
        waits: list[float] = []  # for each broken promise: seconds until the backlog lets it be kept
        reasons: list[str] = []
        if estimate > allowance:
            waits.append(estimate - allowance)  # the work ahead has to shrink by this many seconds' worth
            reasons.append(f"it would end sampling in about {estimate:.3g} s, beyond the {allowance:.3g} s allowed")
        late = [j for j in self.jobs if now + self._seconds(j.left, rows, evaluations) > j.deadline]
        if late:
            waits.append(max(self._seconds(j.left) for j in late))  # until those requests are done
            reasons.append(f"{len(late)} admitted request(s) would then miss their deadline")
        if not waits:
            return Decision(True, **common)
        retry = min(self.max_retry_after_s, max(1, math.ceil(max(waits))))
        return Decision(False, retry_after_s=retry, reason="; ".join(reasons), **common)

    def admit(self, rows: int, evaluations: int, now: Optional[float] = None) -> tuple[Optional[Job], Decision]:
        """`decide`, and when admitted register the request: (its Job, the decision); (None, decision) if refused."""
        now = self.clock() if now is None else now
        decision = self.decide(rows, evaluations, now)
        if not decision.admitted:
            self.refused += 1
            return None, decision
        job = Job(rows=rows, left=evaluations, start=now, deadline=now + self.allowance_s)
        self.jobs.append(job)
        self.admitted += 1
        self.throughput.busy(now)
        return job, decision

    def progress(self, job: Job, now: Optional[float] = None) -> None:
        """One denoiser evaluation of `job` completed: its rows are units done."""
        now = self.clock() if now is None else now
        if job.left > 0:
            job.left -= 1
        self.throughput.add(job.rows, now)

    def finish(self, job: Job, now: Optional[float] = None) -> None:
        """`job` stopped sampling (done, failed or timed out): its remaining work leaves the backlog."""
        now = self.clock() if now is None else now
        try:
            self.jobs.remove(job)
        except ValueError:
            return
        if not self.jobs:
            self.throughput.idle(now)

    def describe(self) -> dict:
        """The replica's admission state (for logs and stats)."""
        return {
            "enabled": self.enabled,
            "deadline_s": self.deadline_s,
            "allowance_s": round(self.allowance_s, 3),
            "in_flight": len(self.jobs),
            "backlog_units": self.backlog_units(),
            "units_per_s": round(self.throughput.value, 3),
            "measured": self.throughput.measured,
            "admitted": self.admitted,
            "refused": self.refused,
        }
