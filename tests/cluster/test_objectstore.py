"""The fleet's object store (SeaweedFS' S3 gateway) through the real boto3 client and `infleet model pull`: the
model comes down verified against its single-part ETag, a wrong key is Unauthorized, a missing key NotFound."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from infleet.api.models import Reason
from infleet.cluster import objectstore
from infleet.cluster.testing import FleetHandle
from infleet.runtime.loader.smollm2 import smollm2_gguf

pytestmark = pytest.mark.cluster
pytest.importorskip("boto3")


def pull(fleet: FleetHandle, uri: str, cache: Path, **env: str) -> subprocess.CompletedProcess[str]:
    keys = objectstore.credentials(fleet.fleet.dir).env()
    full = os.environ | keys | {"AWS_ENDPOINT_URL": objectstore.endpoint(fleet.fleet), "AWS_REGION": "us-east-1"}
    cmd = [sys.executable, "-m", "infleet.cli", "model", "pull", uri, "--cache", str(cache)]
    return subprocess.run(cmd, env=full | env, capture_output=True, text=True, timeout=300)


def test_a_seeded_model_comes_down_verified(fleet: FleetHandle, tmp_path: Path) -> None:
    gguf = smollm2_gguf()
    uri = objectstore.seed(fleet.fleet, gguf)
    assert objectstore.seed(fleet.fleet, gguf) == uri  # seeding again uploads nothing new
    head = objectstore.client(fleet.fleet).head_object(
        Bucket=objectstore.BUCKET, Key=objectstore.SMOLLM2_PREFIX + gguf.name
    )
    assert "-" not in head["ETag"]  # one part: the ETag is the md5 the fetcher checks
    done = pull(fleet, uri, tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    assert (Path(done.stdout.strip()) / gguf.name).read_bytes() == gguf.read_bytes()


def test_a_wrong_key_is_unauthorized_and_a_missing_key_not_found(fleet: FleetHandle, tmp_path: Path) -> None:
    uri = objectstore.seed(fleet.fleet, smollm2_gguf())
    wrong = pull(fleet, uri, tmp_path / "a", AWS_SECRET_ACCESS_KEY="not-the-key")
    assert wrong.returncode == Reason.Unauthorized.value, wrong.stderr
    assert wrong.stderr.splitlines()[-1].startswith("Unauthorized: ")
    missing = pull(fleet, f"s3://{objectstore.BUCKET}/no-such-model/", tmp_path / "b")
    assert missing.returncode == Reason.NotFound.value, missing.stderr
    left = [p for d in "ab" for p in (tmp_path / d).iterdir() if p.is_dir()]
    assert left == [], left  # no cache entry (nor partial download) was left behind
