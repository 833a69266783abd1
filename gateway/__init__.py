"""infleet.gateway: the fleet's one OpenAI and KServe v2 entrypoint.

Where things are: `app.py` (HTTP handlers and the proxy, retries, SSE relay), `catalog.py` (deployments and their
ready endpoints), `discovery.py` (Kubernetes watches that fill the catalog, or fixed `--upstream`s), `routing.py`
(least outstanding, prefix affinity with bounded load), `prompts.py` (the prompt text routing hashes),
`activator.py` (holding requests while a deployment scales from zero), `auth.py` (API keys scoped to namespaces),
`metrics.py` (Prometheus), `__main__.py` (`infleet gateway run`).
"""
