"""infleet.autoscaler: how many replicas, which quantization tier, and what it costs.

Entry points for the operator (all pure; the caller keeps the returned state and passes it back next time):
- `policy.decide(spec, observation, history, now) -> Decision` (replicas, reason, status conditions, history);
- `tiers.choose_tier(options, load, max_quality_loss, state, now, ...) -> TierDecision`;
- `prometheus.PrometheusReader(url).observe(namespace, deployment, replicas, ready_replicas) -> Observation`;
- `cost.cost_per_million_tokens(...)` and `cost.DEFAULT_GPU_PRICES` (mirrored by the chart's values).
`simulator/` replays request traces against a simulated fleet under any policy (`infleet autoscaler simulate`).
"""
