"""ModelReady from the pods' model-fetch init container statuses: the fetcher's own reason, never a bare
CrashLoopBackOff."""

from __future__ import annotations

from typing import Any

from infleet.api import models
from infleet.operator import model_status, resources

from .test_resources import spec_of

S3 = spec_of(model={"uri": "s3://models/smollm2/"})


def failed(message: str, code: int = 12, at: str = "2026-12-05T10:00:00Z") -> dict[str, Any]:
    return {"terminated": {"exitCode": code, "reason": "Error", "message": message, "finishedAt": at}}


def judge(*fetches: dict[str, Any]) -> tuple[str, str, str]:
    c = model_status.condition(S3, list(fetches), 4)
    assert c["type"] == "ModelReady" and c["observedGeneration"] == 4
    return c["status"], c["reason"], c["message"]


def test_the_fetchers_reason_becomes_the_condition() -> None:
    crash_looping = {"state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": failed("...\nNotFound: no key")}
    assert judge(crash_looping) == ("False", "NotFound", "fetching s3://models/smollm2/: no key")
    for reason in models.Reason:
        status, got, _ = judge({"state": failed(f"{reason.name}: why", reason.value)})
        assert (status, got) == ("False", reason.name)
    # killed without a reason of its own (OOM, SIGKILL): still a reason, and the exit code
    assert judge({"state": failed("", 137)})[:2] == ("False", "FetchFailed")
    assert "137" in judge({"state": failed("", 137)})[2]


def test_the_latest_failure_wins_and_one_pod_with_the_model_makes_it_ready() -> None:
    old = {"state": failed("Unauthorized: bad key", 11, "2026-12-05T10:00:00Z")}
    new = {"state": failed("StoreUnreachable: timeout", 12, "2026-12-05T10:05:00Z")}
    assert judge(old, new)[1] == "StoreUnreachable"
    done = {"state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
    assert judge(old, done)[:2] == ("True", "Fetched")


def test_downloading_pending_and_local_models() -> None:
    assert judge({"state": {"running": {"startedAt": "x"}}})[:2] == ("False", "Fetching")
    assert judge()[:2] == ("Unknown", "Pending")
    local = model_status.condition(spec_of(model={"uri": "file:///models/x.gguf"}), [], 1)
    assert (local["status"], local["reason"]) == ("True", "LocalModel")


def test_the_fetch_status_is_read_from_the_pod() -> None:
    st = {"initContainerStatuses": [{"name": "other"}, {"name": resources.FETCH_CONTAINER, "state": {}}]}
    assert model_status.fetch_of(st) == {"name": resources.FETCH_CONTAINER, "state": {}}
    assert model_status.fetch_of({}) is None


def test_failure_lines_are_parsed_only_for_known_reasons() -> None:
    assert models.failure_of("x\nDiskFull: no space\n") == (models.Reason.DiskFull, "no space")
    assert models.failure_of("Traceback: boom") is None


def test_the_condition_shows_bytes_done_and_total() -> None:
    spec = spec_of(model={"uri": "hf://org/big"})
    running = [{"state": {"running": {"startedAt": "x"}}}]
    c = model_status.condition(spec, running, 1, (4_000_000_000, 16_000_000_000))
    assert (c["status"], c["reason"]) == ("False", "Fetching")
    assert c["message"] == "downloading hf://org/big into the cache: 4.00 of 16.00 GB (25%)"
    assert model_status.condition(spec, running, 1, (10**9, None))["message"].endswith(": 1.00 GB so far")
