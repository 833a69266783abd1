"""The operator's state in kopf's memo: one object whose dicts every handler's copy shares, and the operator-wide
loops it runs."""

from __future__ import annotations

import asyncio
import copy

from infleet.autoscaler.tiers import TierState
from infleet.operator.state import OperatorState


def test_kopfs_per_object_copies_share_the_state() -> None:
    state = OperatorState(namespaces=["ml"])
    handler_copy = copy.copy(state)  # what kopf hands each object's handlers
    handler_copy.applied_generation[("Deployment", "ml", "chat")] = 3
    handler_copy.lock(("ml", "chat"))
    assert state.applied_generation == {("Deployment", "ml", "chat"): 3}
    assert state.lock(("ml", "chat")) is handler_copy.lock(("ml", "chat"))


def test_a_deleted_deployment_leaves_no_memory() -> None:
    state = OperatorState()
    key, other = ("ml", "chat"), ("ml", "other")
    for k in (key, other):
        state.known[k] = {}
        state.history[k] = ()
        state.tier_states[k] = TierState("int8")
        state.mixes[k] = (33.0, 128.0)
    state.forget(key)
    memories = (state.known, state.history, state.tier_states, state.mixes)
    assert all(key not in m and other in m for m in memories)


def test_a_loop_outlives_a_failing_tick_and_stops_at_cleanup() -> None:
    ticks: list[int] = []

    async def tick(state: OperatorState) -> None:
        ticks.append(len(ticks))
        if len(ticks) == 1:
            raise RuntimeError("one bad tick")

    async def scenario() -> None:
        state = OperatorState()
        state.start_loop("test", 0.01, tick)
        while len(ticks) < 3:
            await asyncio.sleep(0.01)
        await state.stop_loops()
        assert state.loops == []
        seen = len(ticks)
        await asyncio.sleep(0.05)
        assert len(ticks) == seen, "a stopped loop ticks no more"

    asyncio.run(scenario())
