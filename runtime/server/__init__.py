"""The HTTP server: OpenAI and KServe v2 APIs, health and metrics over one engine."""
