"""hf:// through the real huggingface_hub client, pointed (HF_ENDPOINT) at a local server in the hub's layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from infleet.runtime.fetch.errors import Reason

from .hub import Hub, Repo

WEIGHTS_V1 = b"\x01" * 4096
WEIGHTS_V2 = b"\x02" * 4096


def model(weights: bytes, layers: int) -> dict[str, bytes]:
    return {
        "config.json": json.dumps({"num_hidden_layers": layers}).encode(),
        "tokenizer.json": b'{"model": {}}',
        "model.safetensors": weights,
        "README.md": b"not fetched: not a model file",
    }


@pytest.fixture
def hub() -> Iterator[Hub]:
    v1, v2 = "1" * 40, "2" * 40
    repos = {
        "org/tiny": Repo(refs={"main": v2, "v1": v1}, commits={v1: model(WEIGHTS_V1, 1), v2: model(WEIGHTS_V2, 2)}),
        "org/gated": Repo(refs={"main": v1}, commits={v1: model(WEIGHTS_V1, 1)}, gated=True),
        "org/corrupt": Repo(refs={"main": v1}, commits={v1: model(b"\x03" * 4096, 1)}, corrupt={"model.safetensors"}),
    }
    with Hub(repos) as server:
        yield server


def pull(hub: Hub, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"HF_ENDPOINT": hub.url, "HF_HOME": str(cache.parent / "hf-home"), "HF_HUB_DISABLE_XET": "1"}
    env.pop("HF_TOKEN", None)
    cmd = [sys.executable, "-m", "infleet.cli", "model", "pull", *args, "--cache", str(cache)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def test_revision_pin_fetches_that_revision(hub: Hub, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    done = pull(hub, cache, "hf://org/tiny", "--revision", "v1")
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip())
    assert json.loads((path / "config.json").read_text()) == {"num_hidden_layers": 1}
    assert (path / "model.safetensors").read_bytes() == WEIGHTS_V1
    assert not (path / "README.md").exists()  # outside allow_patterns
    latest = pull(hub, cache, "hf://org/tiny")
    assert latest.returncode == 0, latest.stderr
    assert (Path(latest.stdout.strip()) / "model.safetensors").read_bytes() == WEIGHTS_V2
    assert Path(latest.stdout.strip()) != path


def test_gated_repo_is_unauthorized(hub: Hub, tmp_path: Path) -> None:
    done = pull(hub, tmp_path / "cache", "hf://org/gated")
    assert done.returncode == Reason.Unauthorized.value, done.stderr
    assert done.stderr.splitlines()[-1].startswith("Unauthorized: ")


def test_an_unreachable_hub_is_store_unreachable(hub: Hub, tmp_path: Path) -> None:
    """Connection refused: the reason the operator shows for a hub it cannot reach (no traceback, no hang)."""
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = os.environ | {"HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HOME": str(tmp_path / "hf-home")}
    cmd = [sys.executable, "-m", "infleet.cli", "model", "pull", "hf://org/tiny", "--cache", str(tmp_path / "c")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == Reason.StoreUnreachable.value, done.stderr
    assert done.stderr.splitlines()[-1].startswith("StoreUnreachable: org/tiny: ConnectError")
    assert "Traceback" not in done.stderr


def test_missing_repo_is_not_found(hub: Hub, tmp_path: Path) -> None:
    done = pull(hub, tmp_path / "cache", "hf://org/nothing")
    assert done.returncode == Reason.NotFound.value, done.stderr
    assert done.stderr.splitlines()[-1].startswith("NotFound: ")


def test_corrupt_lfs_body_is_rejected_and_leaves_nothing(hub: Hub, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    done = pull(hub, cache, "hf://org/corrupt")
    assert done.returncode == Reason.ChecksumMismatch.value, done.stderr
    assert done.stderr.splitlines()[-1].startswith("ChecksumMismatch: ")
    leftovers = [p for p in cache.iterdir() if p.is_dir()]
    assert leftovers == []
