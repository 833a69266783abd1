"""The multi-window multi-burn-rate recipe (Google SRE workbook, ch. 5), applied to each deployment's own objective.

A burn rate of 1 spends the error budget (1 - objective) exactly over the budget period; 14.4 spends 2% of a 30-day
budget in an hour. Each alert pairs a long window (is the burn real?) with a short one (is it still happening?), so
it fires fast and resets fast. The burn multiples are the recipe's for a 30-day period; the objective they multiply
is each deployment's own (`spec.slo.objectivePercent`, exported by the operator).
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_BUDGET_PERIOD = "30d"
# every window a recording rule computes, shortest first
WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
COST_ALERT_FOR = "15m"  # $/1M tokens above spec.cost.maxPerMillionTokens for this long raises the cost alert


@dataclass(frozen=True)
class BurnAlert:
    """One alert of the recipe: fire when the error ratio over both windows is at least `burn x budget`."""

    name: str
    severity: str  # PAGE or TICKET: the severity labels Alertmanager's default routes and kube-prometheus know
    burn: float
    long: str
    short: str
    anchor: str  # section of docs/runbooks.md


# The chart can rename them (monitoring.alertSeverities) for routing trees that use other words.
PAGE, TICKET = "critical", "warning"

BURN_ALERTS: tuple[BurnAlert, ...] = (
    BurnAlert("InfleetSLOBudgetBurnFast", PAGE, 14.4, "1h", "5m", "infleetslobudgetburnfast"),
    BurnAlert("InfleetSLOBudgetBurnHigh", PAGE, 6.0, "6h", "30m", "infleetslobudgetburnhigh"),
    BurnAlert("InfleetSLOBudgetBurnSteady", TICKET, 3.0, "1d", "2h", "infleetslobudgetburnsteady"),
    BurnAlert("InfleetSLOBudgetBurnSlow", TICKET, 1.0, "3d", "6h", "infleetslobudgetburnslow"),
)
COST_ALERT = "InfleetCostAboveBudget"
COST_ALERT_ANCHOR = "infleetcostabovebudget"

# team budget burn (gateway/budgets.py): month-to-date spend / monthly budget crossing each threshold of
# infleet.api.metrics.BUDGET_BURN_THRESHOLDS, one alert per band so that only the highest reached fires
TEAM_BUDGET_ALERT = "InfleetTeamBudgetBurn"
TEAM_BUDGET_ALERT_ANCHOR = "infleetteambudgetburn"
