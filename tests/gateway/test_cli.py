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


def test_unusable_teams_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    teams = tmp_path / "teams.yaml"
    teams.write_text("teams: {web: {apiKeys: [k]}, app: {apiKeys: [k]}}\n")
    assert main(["run", "--upstream", "m=http://h:1", "--teams-file", str(teams)]) == 1
    err = capsys.readouterr().err
    assert "cannot read teams" in err and "share an API key" in err and "[k]" not in err


def test_a_changed_teams_file_is_reloaded_and_a_broken_one_ignored(tmp_path: Path) -> None:
    import asyncio

    from infleet.gateway.__main__ import follow_teams
    from infleet.gateway.app import Gateway
    from infleet.gateway.teams import Teams

    path = tmp_path / "teams.yaml"
    path.write_text("teams: {web: {outputTokensPerMinute: 10}}\n")

    async def scenario() -> None:
        gateway = Gateway(teams=Teams.load(path))
        follow_teams(gateway, path, every=0.1)()
        await asyncio.sleep(0.3)
        path.write_text("teams: {web: {outputTokensPerMinute: 20}, app: {}}\n")
        for _ in range(100):
            if "app" in gateway.budgets.teams.teams:
                break
            await asyncio.sleep(0.05)
        assert gateway.budgets.teams.teams["web"].output_tokens_per_minute == 20
        path.write_text("teams: {web: {outputTokensPerMinute: -1}}\n")
        await asyncio.sleep(0.5)
        assert sorted(gateway.budgets.teams.teams) == ["app", "web"]  # the previous teams stay

    asyncio.run(scenario())
