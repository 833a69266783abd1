"""The launcher expands dependent environment variables as the kubelet does (LeaderWorkerSet's
`INFLEET_LEADER_ADDR=$(LWS_LEADER_ADDRESS)` relies on it)."""

from __future__ import annotations

from pathlib import Path

from infleet.cluster.controlplane import Fleet
from infleet.cluster.launcher import expand


def test_dependent_variables_expand_like_the_kubelet() -> None:
    defined = {"LWS_LEADER_ADDRESS": "big-0.big.ns", "PORT": "29500"}
    assert expand("$(LWS_LEADER_ADDRESS)", defined) == "big-0.big.ns"
    assert expand("tcp://$(LWS_LEADER_ADDRESS):$(PORT)", defined) == "tcp://big-0.big.ns:29500"
    assert expand("$(UNDEFINED)", defined) == "$(UNDEFINED)"  # left as written
    assert expand("$$(PORT) costs $$5", defined) == "$(PORT) costs $5"  # $$ escapes
    assert expand("plain", defined) == "plain"


def test_a_fleet_directory_that_does_not_exist_yet_is_made(tmp_path: Path) -> None:
    """`INFLEET_FLEET_DIR` may name a new directory: listing the components writes the audit policy into it."""
    fleet = Fleet(tmp_path / "new" / "fleet")
    fleet.components()
    assert (tmp_path / "new" / "fleet" / "audit-policy.json").is_file()
