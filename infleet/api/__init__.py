"""Facts shared by several parts of infleet, declared once and free of torch and Kubernetes clients, so any part
(runtime, operator, gateway, autoscaler) may import them (docs/architecture.md)."""
