"""The verdict of an autoscaler comparison, as code (docs/autoscaler-evaluation.md, section 6).

A win has to be earned against someone: infleet reaches the attainment target and uses fewer GPU-hours than every
other policy that reaches it, the hindsight static oracle included. When no rival reaches the target there is no
win to claim; the comparison moves to the rivals' best attainment, and the verdict says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

TARGET = 0.99  # SLO attainment a policy must reach
BAND = 0.01  # "within one point" of the rivals' best attainment, when nobody reaches the target
OURS, ORACLE = "infleet", "static-oracle"

Outcome = Literal["infleet wins", "infleet loses", "infleet holds the band", "infleet falls short"]


@dataclass(frozen=True)
class Row:
    """One policy's result on one workload."""

    attainment: float
    gpu_hours: float
    cost_per_million_tokens: float | None = None
    scale_events: float | None = None


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str

    @property
    def wins(self) -> bool:
        return self.outcome == "infleet wins"

    def __str__(self) -> str:
        return f"{self.outcome}: {self.reason}"


def row(values: Mapping[str, float] | Row, name: str) -> Row:
    """A result row from the benchmark's dicts (`slo_attainment`, `gpu_hours`, ...) or a Row, checked."""
    if isinstance(values, Row):
        got = values
    else:
        try:
            got = Row(
                float(values["slo_attainment"]),
                float(values["gpu_hours"]),
                values.get("cost_per_million_tokens"),
                values.get("scale_events"),
            )
        except KeyError as err:
            raise ValueError(f"result of {name!r} has no {err.args[0]!r}") from None
    if not 0 <= got.attainment <= 1:
        raise ValueError(f"result of {name!r}: attainment {got.attainment} is not a fraction in [0, 1]")
    if got.gpu_hours < 0:
        raise ValueError(f"result of {name!r}: {got.gpu_hours} GPU-hours is negative")
    return got


def judge(table: Mapping[str, Mapping[str, float] | Row], target: float = TARGET, band: float = BAND) -> Verdict:
    """The verdict for one workload's table: policy name -> result, infleet's and the static oracle's included."""
    for needed in (OURS, ORACLE):
        if needed not in table:
            raise ValueError(f"the table has no {needed!r} row: there is nothing to judge without it")
    rows = {name: row(values, name) for name, values in table.items()}
    ours = rows.pop(OURS)
    mine = f"infleet {ours.attainment:.2%} with {ours.gpu_hours:.2f} GPU-h"
    reached = {name: r for name, r in rows.items() if r.attainment >= target}
    if reached:
        rivals = ", ".join(f"{name} {r.gpu_hours:.2f} GPU-h" for name, r in sorted(reached.items()))
        if ours.attainment < target:
            return Verdict("infleet loses", f"{mine} misses {target:.0%}, which {rivals} reach")
        heavier = {name: r for name, r in reached.items() if r.gpu_hours <= ours.gpu_hours}
        if heavier:
            who = ", ".join(f"{name} {r.gpu_hours:.2f} GPU-h" for name, r in sorted(heavier.items()))
            return Verdict("infleet loses", f"{mine}; at {target:.0%}, {who} uses no more GPU-hours")
        cheapest = min(r.gpu_hours for r in reached.values())
        saving = 1 - ours.gpu_hours / cheapest if cheapest > 0 else 0.0
        return Verdict(
            "infleet wins", f"{mine}, {saving:.1%} fewer than the cheapest other policy at {target:.0%} ({rivals})"
        )
    if not rows:
        raise ValueError("the table holds infleet alone: there is nothing to judge it against")
    best_name, best = max(rows.items(), key=lambda item: item[1].attainment)
    in_band = {name: r for name, r in rows.items() if r.attainment >= best.attainment - band}
    cheap_name, cheap = min(in_band.items(), key=lambda item: item[1].gpu_hours)
    where = (
        f"no other policy reaches {target:.0%}, so infleet is compared at the rivals' best attainment"
        f" ({best_name} {best.attainment:.2%}): {mine}; the cheapest within {100 * band:g} point of it is"
        f" {cheap_name} with {cheap.gpu_hours:.2f} GPU-h"
    )
    if ours.attainment < best.attainment - band:
        return Verdict("infleet falls short", f"{where}; infleet is below the band")
    if ours.gpu_hours > cheap.gpu_hours:
        return Verdict("infleet falls short", f"{where}; infleet uses more")
    return Verdict("infleet holds the band", where)


GOAL_SAVING = 0.15  # fewer GPU-hours than the cheapest tuned baseline at the target (issue goal; SageServe: 25%)


@dataclass(frozen=True)
class Goal:
    met: bool
    reason: str

    def __str__(self) -> str:
        return f"goal {'met' if self.met else 'not met'}: {self.reason}"


def goal(table: Mapping[str, Mapping[str, float] | Row], target: float = TARGET, band: float = BAND) -> Goal:
    """The goal on one workload (docs/autoscaler-evaluation.md, section 6): a win with at least GOAL_SAVING fewer
    GPU-hours than the cheapest tuned baseline at the target (when one reaches it) and never more than the static
    oracle; where no rival reaches the target, holding the band, again at no more than the oracle."""
    verdict = judge(table, target, band)
    rows = {name: row(values, name) for name, values in table.items()}
    ours, oracle = rows[OURS], rows[ORACLE]
    misses: list[str] = []
    if ours.gpu_hours > oracle.gpu_hours:
        misses.append(f"{ours.gpu_hours:.2f} GPU-h is more than the static oracle's {oracle.gpu_hours:.2f}")
    if verdict.outcome in ("infleet loses", "infleet falls short"):
        misses.append(verdict.outcome)
    baselines = {n: r for n, r in rows.items() if n not in (OURS, ORACLE) and r.attainment >= target}
    saving = ""
    if verdict.wins and baselines:
        cheapest_name, cheapest = min(baselines.items(), key=lambda item: item[1].gpu_hours)
        cut = 1 - ours.gpu_hours / cheapest.gpu_hours if cheapest.gpu_hours > 0 else 0.0
        saving = f"{cut:.1%} fewer GPU-h than {cheapest_name}"
        if cut < GOAL_SAVING:
            misses.append(f"only {saving}, below {GOAL_SAVING:.0%}")
    elif verdict.wins:
        saving = "no tuned baseline reaches the target, so the saving is over the static oracle alone"
    if misses:
        return Goal(False, "; ".join(misses))
    return Goal(True, f"{verdict.outcome}" + (f", {saving}" if saving else ""))
