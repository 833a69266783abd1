"""Every PromQL expression the chart ships, by where it lives, so tests (and the e2e suite) can run each one.

Dashboard expressions contain Grafana's variables; `substitute` replaces them with values a Prometheus accepts.
A variable's `label_values(SELECTOR, LABEL)` becomes `group by (LABEL) (SELECTOR)`, the series behind its choices.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from infleet.monitoring.dashboards import dashboards
from infleet.monitoring.rules import rule_files

# Grafana's variables with "All" selected, for a Prometheus scraping every second
TEST_VARIABLES = {
    "$__rate_interval": "10s", "$__interval": "5s", "$__range": "1m", "$namespace": ".*", "$deployment": ".*",
    "$team": ".*",
}  # fmt: skip


def substitute(expr: str, variables: dict[str, str] = TEST_VARIABLES) -> str:
    for variable, value in variables.items():
        expr = expr.replace(variable, value)
    if "$" in expr:
        raise ValueError(f"unsubstituted variable in {expr}")
    return expr


def _walk(node: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        title = node.get("title") or node.get("name") or ""
        here = f"{where}/{title}" if title else where
        if isinstance(node.get("expr"), str):
            yield f"{here}#{node.get('refId', 'annotation')}", node["expr"]
        query = node.get("query")
        if node.get("type") == "query" and isinstance(query, dict):
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query["query"])
            if not m:
                raise ValueError(f"{here}: variable query is not label_values(SELECTOR, LABEL): {query['query']}")
            yield f"{here}#variable", f"group by ({m.group(2)}) ({m.group(1)})"
        for key, value in node.items():
            if key != "query":
                yield from _walk(value, here)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item, where)


def expressions() -> list[tuple[str, str]]:
    """(where, expr) for every dashboard target, annotation and variable, and every recording and alerting rule."""
    found: list[tuple[str, str]] = []
    for name, board in dashboards().items():
        found += list(_walk(board, name))
    for name, content in rule_files().items():
        for group in content["groups"]:
            for rule in group["rules"]:
                label = rule.get("record") or rule["alert"]
                sli = rule.get("labels", {}).get("sli", "")
                found.append((f"{name}/{label}{'/' + sli if sli else ''}", rule["expr"]))
    return found
