"""SLO targets and the multi-window multi-burn-rate recipe for a 30-day error budget (DESIGN.md section 2).

A burn rate of 1 spends the budget exactly in 30 days; 14.4 spends 2% of it in an hour. Each alert pairs a long
window (is the burn real?) with a short one (is it still happening?), so it fires fast and resets fast.
"""

from __future__ import annotations

from dataclasses import dataclass

BUDGET_PERIOD = "30d"
# every window a recording rule computes, shortest first
WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")


@dataclass(frozen=True)
class SLOTargets:
    """Per-request latency thresholds (seconds; None = not an objective) and the share that must meet them."""

    ttft: float | None = 2.0
    tpot: float | None = 0.1
    e2e: float | None = 30.0
    objective: float = 0.99

    def __post_init__(self) -> None:
        if not 0.5 <= self.objective < 1.0:
            raise ValueError(f"objective must be in [0.5, 1), e.g. 0.99 for 99%; got {self.objective}")
        for name, value in self.thresholds().items():
            if value <= 0:
                raise ValueError(f"SLO threshold {name} must be positive seconds; got {value}")

    def thresholds(self) -> dict[str, float]:
        """The SLIs that are objectives, by name: ttft, tpot, e2e."""
        pairs = {"ttft": self.ttft, "tpot": self.tpot, "e2e": self.e2e}
        return {name: value for name, value in pairs.items() if value is not None}

    @property
    def budget(self) -> float:
        """Share of requests allowed to miss (1 - objective)."""
        return round(1.0 - self.objective, 12)


DEFAULT_TARGETS = SLOTargets()


@dataclass(frozen=True)
class BurnAlert:
    """One alert of the recipe: fire when the error ratio over both windows is at least `burn x budget`."""

    name: str
    severity: str  # page | ticket
    burn: float
    long: str
    short: str
    anchor: str  # section of docs/runbooks.md

    @property
    def budget_spent(self) -> str:
        """What a burn at this rate over the long window costs, for the alert text."""
        return f"{self.burn:g}x the sustainable rate over {self.long}"


BURN_ALERTS: tuple[BurnAlert, ...] = (
    BurnAlert("InfleetSLOBudgetBurnFast", "page", 14.4, "1h", "5m", "infleetslobudgetburnfast"),
    BurnAlert("InfleetSLOBudgetBurnHigh", "page", 6.0, "6h", "30m", "infleetslobudgetburnhigh"),
    BurnAlert("InfleetSLOBudgetBurnSteady", "ticket", 3.0, "1d", "2h", "infleetslobudgetburnsteady"),
    BurnAlert("InfleetSLOBudgetBurnSlow", "ticket", 1.0, "3d", "6h", "infleetslobudgetburnslow"),
)
