"""The launcher expands dependent environment variables as the kubelet does (LeaderWorkerSet's
`INFLEET_LEADER_ADDR=$(LWS_LEADER_ADDRESS)` relies on it)."""

from __future__ import annotations

from infleet.cluster.launcher import expand


def test_dependent_variables_expand_like_the_kubelet() -> None:
    defined = {"LWS_LEADER_ADDRESS": "big-0.big.ns", "PORT": "29500"}
    assert expand("$(LWS_LEADER_ADDRESS)", defined) == "big-0.big.ns"
    assert expand("tcp://$(LWS_LEADER_ADDRESS):$(PORT)", defined) == "tcp://big-0.big.ns:29500"
    assert expand("$(UNDEFINED)", defined) == "$(UNDEFINED)"  # left as written
    assert expand("$$(PORT) costs $$5", defined) == "$(PORT) costs $5"  # $$ escapes
    assert expand("plain", defined) == "plain"
