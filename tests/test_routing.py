"""The model deployments' request router (serve/routing.py) on stand-in replicas: the replica with the
fewest of this caller's calls in flight first, ties taken in turn, completed calls counted down.
(tests/test_parity.py serves the fused app through it on two live replicas.)"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from serve.routing import LeastInFlightRouter


@dataclass(frozen=True)
class StandInReplica:
    replica_id: str


def _router() -> LeastInFlightRouter:
    router = object.__new__(LeastInFlightRouter)  # Serve builds it with a live deployment; the policy needs none of that
    router.initialize_state()
    return router


def test_routes_to_the_replica_with_fewest_calls_in_flight_and_alternates_ties():
    router = _router()
    a, b = StandInReplica("a"), StandInReplica("b")

    def first() -> str:
        ranks = asyncio.run(router.choose_replicas([a, b]))
        assert [len(rank) for rank in ranks] == [1, 1]
        return ranks[0][0].replica_id

    # two cohorts sent at the same moment (nothing routed yet): different replicas
    assert {first(), first()} == {"a", "b"}
    router.on_request_routed(None, "a", None)
    assert [first() for _ in range(4)] == ["b"] * 4  # a busy: b, however the ties turn
    router.on_request_routed(None, "b", None)
    router.on_request_routed(None, "b", None)
    assert first() == "a"
    router.on_request_completed("b", "req-1")
    router.on_request_completed("b", "req-2")
    assert first() == "b"
    router.on_request_completed("a", "req-0")
    router.on_request_completed("a", "req-0")  # a repeated completion never counts below zero
    assert {first(), first()} == {"a", "b"}
