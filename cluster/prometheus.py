"""The local fleet's Prometheus: Debian's package, scraping pods through the node agent's HTTP discovery with
the relabelling a real cluster uses, and evaluating the chart's SLO rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from infleet.monitoring import scrape

RULES_DIR = Path(__file__).resolve().parents[1] / "charts" / "infleet" / "rules"


def config(agent_port: int, scrape_interval: str = "5s") -> dict[str, Any]:
    job = scrape.pod_job(scrape_interval=scrape_interval)
    del job["kubernetes_sd_configs"]
    job["http_sd_configs"] = [{"url": f"http://127.0.0.1:{agent_port}/sd/pods", "refresh_interval": "5s"}]
    rules = sorted(str(p) for p in RULES_DIR.glob("*.yaml")) if RULES_DIR.is_dir() else []
    return scrape.prometheus_config([job], rule_files=rules, interval=scrape_interval)


def write_config(path: Path, agent_port: int) -> Path:
    path.write_text(yaml.safe_dump(config(agent_port), sort_keys=False))
    return path
