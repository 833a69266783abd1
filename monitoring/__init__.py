"""Prometheus rules, scrape configs and Grafana dashboards for an infleet fleet, generated from Python."""
