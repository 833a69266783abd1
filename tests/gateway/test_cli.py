"""`infleet gateway run` refuses bad arguments with one clear line and a non-zero exit, before serving anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from infleet.gateway.__main__ import main


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--port", "0", "--upstream", "m=http://h:1"], 2, "--port must be at least 1"),
        (["--upstream", "nonsense"], 2, "expected [namespace/]model=http://host:port"),
        (["--upstream", "m=http://h:1", "--hold-timeout", "0"], 2, "--hold-timeout"),
        (["--upstream", "m=http://h:1", "--retry-budget", "-1"], 2, "--retry-budget"),
        (["--kubeconfig", "/nonexistent/kubeconfig"], 1, "no Kubernetes configuration"),
    ],
)
def test_bad_arguments(args: list[str], code: int, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", *args]) == code
    assert message in capsys.readouterr().err


def test_unreadable_key_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text("[a list]\n")
    assert main(["run", "--upstream", "m=http://h:1", "--api-keys-file", str(keys)]) == 1
    assert "cannot read API keys" in capsys.readouterr().err
