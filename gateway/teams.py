"""Which team a request belongs to, and what that team may spend: the gateway's teams file.

The chart writes `gateway.teams` into a Secret (it holds API keys) that the gateway reads as YAML:

    teams:
      research:
        apiKeys: [sk-research-1]          # requests with `Authorization: Bearer <key>` are research's
        namespaces: [research]            # requests to deployments in these namespaces, when no key says otherwise
        inputTokensPerMinute: 200000      # prompt tokens; unset: no limit
        outputTokensPerMinute: 50000      # completion tokens; unset: no limit
        monthlyBudgetDollars: 500         # spend per calendar month (UTC); unset: no limit

An API key names its team first, then the deployment's namespace; a request matching neither is counted under no
team and is never limited. Only SHA-256 digests of the keys are kept, as in gateway/auth.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

TEAM_NAME = r"^[a-z0-9]([-a-z0-9_.]{0,61}[a-z0-9])?$"
NO_TEAM = ""


class TeamSpec(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    api_keys: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    namespaces: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    input_tokens_per_minute: int | None = Field(default=None, ge=1)
    output_tokens_per_minute: int | None = Field(default=None, ge=1)
    monthly_budget_dollars: float | None = Field(default=None, ge=0, allow_inf_nan=False)


class TeamsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    teams: dict[Annotated[str, Field(pattern=TEAM_NAME)], TeamSpec] = Field(default_factory=dict)


@dataclass(frozen=True)
class Team:
    name: str
    input_tokens_per_minute: int | None = None
    output_tokens_per_minute: int | None = None
    monthly_budget_dollars: float | None = None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class TeamError(ValueError):
    """The teams file is unusable; the message says where."""


@dataclass(frozen=True)
class Teams:
    """The parsed teams file: lookups by key digest and by namespace."""

    teams: Mapping[str, Team]
    by_key: Mapping[bytes, str]
    by_namespace: Mapping[str, str]

    @classmethod
    def parse(cls, data: Any, source: str = "teams") -> Teams:
        try:
            parsed = TeamsFile.model_validate(data or {})
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise TeamError(f"{source}: {where}: {first['msg']} ({e.error_count()} error(s))") from None
        teams: dict[str, Team] = {}
        by_key: dict[bytes, str] = {}
        by_namespace: dict[str, str] = {}
        for name, spec in parsed.teams.items():
            teams[name] = Team(
                name, spec.input_tokens_per_minute, spec.output_tokens_per_minute, spec.monthly_budget_dollars
            )
            for key in spec.api_keys:
                if (owner := by_key.setdefault(_digest(key), name)) != name:
                    raise TeamError(f"{source}: teams {owner!r} and {name!r} share an API key")
            for ns in spec.namespaces:
                if (owner := by_namespace.setdefault(ns, name)) != name:
                    raise TeamError(f"{source}: teams {owner!r} and {name!r} both claim namespace {ns!r}")
        return cls(teams, by_key, by_namespace)

    @classmethod
    def load(cls, path: Path) -> Teams:
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise TeamError(f"{path}: {e}") from None
        return cls.parse(data, str(path))

    def team_for(self, authorization: str | None, namespace: str) -> Team | None:
        """The API key's team, else the namespace's, else None."""
        if authorization:
            scheme, _, key = authorization.partition(" ")
            if scheme.lower() == "bearer" and (name := self.by_key.get(_digest(key.strip()))):
                return self.teams[name]
        name = self.by_namespace.get(namespace)
        return self.teams[name] if name else None

    def __repr__(self) -> str:  # never show keys, not even their digests
        return f"Teams({sorted(self.teams)})"
