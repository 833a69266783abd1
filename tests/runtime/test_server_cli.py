"""`python -m infleet.runtime serve` argument handling that fails before any model is loaded."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from infleet.runtime.__main__ import PROG, main, model_path
from infleet.runtime.server.launch import free_port


def serve(*args: str, port: int = 0) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "infleet.runtime", "serve", *args, "--port", str(port or free_port())]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("/no/such/model.gguf", "model path '/no/such/model.gguf' does not exist"),
        ("file:///no/such/dir", "model path '/no/such/dir' does not exist"),
        ("s3://bucket/model", "scheme 's3' is not supported"),
    ],
)
def test_bad_model_paths_exit_1_with_one_line(model: str, message: str) -> None:
    done = serve("--model", model)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr


def test_a_file_that_is_not_a_model_exits_1_with_one_line(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_text("not a model")
    done = serve("--model", str(fake))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "GGUF" in lines[0], done.stderr


def test_a_port_in_use_exits_1_with_one_line_before_loading(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_text("not a model")  # never read: the port is checked first
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = serve("--model", str(fake), "--host", "127.0.0.1", port=port)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines == [f"{PROG}: cannot listen on 127.0.0.1:{port}: Address already in use"], lines


def test_file_uris_resolve_to_paths(tmp_path: Path) -> None:
    (tmp_path / "my model.gguf").write_bytes(b"")
    assert model_path(f"file://{tmp_path}/my%20model.gguf") == tmp_path / "my model.gguf"
    assert model_path(str(tmp_path)) == tmp_path


def test_bad_parallel_sizes_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--model", "x", "--tensor-parallel", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err
    assert main(["serve", "--model", "x", "--pipeline-parallel", "2"]) == 1  # checked before any rank starts
    assert "does not exist" in capsys.readouterr().err


def test_a_prefill_cap_below_one_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--model", "x", "--max-prefill-tokens-per-step", "0"]) == 2
    assert "--max-prefill-tokens-per-step must be at least 1" in capsys.readouterr().err


def test_zero_micro_batches_per_stage_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--model", "x", "--pipeline-parallel", "2", "--micro-batches-per-stage", "0"]) == 2
    assert "--micro-batches-per-stage must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--max-batch-tokens", "--max-num-seqs", "--max-waiting", "--max-model-len"])
def test_engine_settings_below_one_are_refused_before_loading(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--model", "x", flag, "0"]) == 2
    assert f"{flag} must be at least 1" in capsys.readouterr().err


def test_engine_config_from_kwargs_is_checked_like_the_flags() -> None:
    from infleet.runtime.config import EngineConfig

    with pytest.raises(ValueError, match="--num-kv-blocks must be at least 1"):
        EngineConfig(num_kv_blocks=0)
    assert EngineConfig(max_prefill_tokens=None, num_kv_blocks=None).max_batch_tokens == 2048
