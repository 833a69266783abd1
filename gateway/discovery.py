"""Fill the catalog from Kubernetes: watch InferenceDeployments, the EndpointSlices of their Services, and the
API-key Secrets.

Each kind runs list-then-watch in a daemon thread (the kubernetes client is synchronous): a list replaces what
the catalog holds for that kind and scope, then watch events apply changes, and any error or an expired resource
version (410 Gone) starts over with a fresh list, so the catalog converges after API server restarts too.

Only the operator's main Service counts (its EndpointSlices carry `infleet.dev/deployment=<name>`, copied from the
Service, and `kubernetes.io/service-name=<name>`; the headless group Service is skipped), and only endpoints
whose `ready` condition is true (unset means ready, per the EndpointSlice API) get traffic.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from infleet.gateway.activator import SCALE_FROM_ZERO_ANNOTATION
from infleet.gateway.auth import API_KEYS_LABEL, KeyStore
from infleet.gateway.cache import CacheSettings
from infleet.gateway.cascade import Rule
from infleet.gateway.catalog import LEAST_OUTSTANDING, Adapter, Catalog, Deployment, Endpoint
from infleet.gateway.slo import Thresholds

log = logging.getLogger("infleet.gateway.discovery")

GROUP, VERSION, PLURAL = "infleet.dev", "v1alpha1", "inferencedeployments"
MANAGED_BY = "app.kubernetes.io/managed-by=infleet"
DEPLOYMENT_LABEL = "infleet.dev/deployment"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
RUNTIME_PORT = 8000
WATCH_SECONDS = 300


# ---- objects -> catalog entries (pure functions) -----------------------------------------------------------------


def deployment_from(obj: dict[str, Any]) -> Deployment:
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    served = (spec.get("model") or {}).get("servedName") or meta["name"]
    strategy = (spec.get("routing") or {}).get("strategy") or LEAST_OUTSTANDING
    cache = CacheSettings.from_spec((spec.get("gateway") or {}).get("responseCache"))
    price = (obj.get("status") or {}).get("costPerMillionTokens")
    price = float(price) if isinstance(price, int | float) and math.isfinite(price) and price >= 0 else None
    slo = Thresholds.from_spec(spec.get("slo"))
    loads_by_uri = ((spec.get("runtime") or {}).get("engine") or "infleet") == "infleet"
    adapters = tuple(
        Adapter(str(a["name"]), str(a["uri"]) if loads_by_uri and a.get("uri") else None, a.get("revision"))
        for a in spec.get("adapters") or []
        if isinstance(a, dict) and a.get("name")
    )
    cascade = Rule.from_spec((spec.get("gateway") or {}).get("cascade"))
    return Deployment(
        meta["namespace"],
        meta["name"],
        served,
        strategy,
        slo=slo,
        cache=cache,
        price=price,
        adapters=adapters,
        cascade=cascade,
    )


def slice_endpoints(s: Any) -> tuple[str, str, str, tuple[Endpoint, ...]] | None:
    """(namespace, deployment, slice name, ready endpoints), or None for a slice that is not a main Service's."""
    labels = s.metadata.labels or {}
    deployment = labels.get(DEPLOYMENT_LABEL)
    if not deployment or labels.get(SERVICE_NAME_LABEL) != deployment:
        return None
    ports = s.ports or []
    port = next((p.port for p in ports if p.name == "http" and p.port), None)
    port = port or next((p.port for p in ports if p.port), RUNTIME_PORT)
    ready = tuple(
        Endpoint(address, port)
        for e in s.endpoints or []
        if e.conditions is None or e.conditions.ready is not False
        for address in e.addresses or []
    )
    return s.metadata.namespace, deployment, s.metadata.name, ready


def secret_keys(s: Any) -> dict[str, str]:
    out = {}
    for key, value in (s.data or {}).items():
        try:
            out[key] = base64.b64decode(value).decode()
        except (binascii.Error, UnicodeDecodeError):
            log.warning(
                "secret %s/%s: an entry is not valid base64 UTF-8; skipped", s.metadata.namespace, s.metadata.name
            )
    return out


# ---- the watches ---------------------------------------------------------------------------------------------------


class KubernetesDiscovery:
    def __init__(
        self,
        api: client.ApiClient,
        catalog: Catalog,
        namespaces: list[str] | None = None,
        keys: KeyStore | None = None,
        secrets_namespace: str | None = None,
    ) -> None:
        self.api = api
        self.catalog = catalog
        self.namespaces: list[str | None] = list(namespaces) if namespaces else [None]
        self.keys = keys
        self.secrets_namespace = secrets_namespace
        self.custom = client.CustomObjectsApi(api)
        self.discovery = client.DiscoveryV1Api(api)
        self.core = client.CoreV1Api(api)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.synced = threading.Event()  # set once every watch has listed at least once
        self._pending = 0
        self._pending_lock = threading.Lock()

    def start(self) -> None:
        loops: list[tuple[str, Callable[[], None]]] = []
        for ns in self.namespaces:
            loops.append((f"idep:{ns or '*'}", lambda ns=ns: self._run(*self._deployments(ns))))  # type: ignore[misc]
            loops.append((f"slices:{ns or '*'}", lambda ns=ns: self._run(*self._slices(ns))))  # type: ignore[misc]
        if self.keys is not None and self.secrets_namespace:
            loops.append(("secrets", lambda: self._run(*self._secrets(self.secrets_namespace or "default"))))
        self._pending = len(loops)
        for name, target in loops:
            t = threading.Thread(target=target, name=f"infleet-gateway-watch-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()

    def _listed(self, first: list[bool]) -> None:
        if first[0]:
            first[0] = False
            with self._pending_lock:
                self._pending -= 1
                if self._pending <= 0:
                    self.synced.set()

    def _run(
        self,
        what: str,
        lister: Callable[..., Any],
        kwargs: dict[str, Any],
        replace: Callable[[list[Any]], None],
        apply: Callable[[str, Any], None],
    ) -> None:
        """List, replace, watch, apply; on any failure back off (up to 10 s) and start over."""
        backoff, first = 0.5, [True]
        while not self._stop.is_set():
            try:
                listing = lister(**kwargs)
                items = listing["items"] if isinstance(listing, dict) else listing.items
                version = listing["metadata"]["resourceVersion"] if isinstance(listing, dict) else (
                    listing.metadata.resource_version
                )  # fmt: skip
                replace(items)
                self._listed(first)
                backoff = 0.5
                for event in self._stream(lister, kwargs, version):
                    if self._stop.is_set():
                        return
                    if event["type"] == "ERROR":
                        raise ApiException(status=(event["raw_object"] or {}).get("code", 500), reason="watch error")
                    apply(event["type"], event["object"])
            except ApiException as e:
                if e.status == 410:  # resource version too old: relist now
                    continue
                log.warning("watching %s: API error %s %s; retrying in %.1fs", what, e.status, e.reason, backoff)
            except Exception as e:  # the connection dropped, the API server restarted, ...
                log.warning("watching %s: %s: %s; retrying in %.1fs", what, type(e).__name__, e, backoff)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)

    def _stream(self, lister: Callable[..., Any], kwargs: dict[str, Any], version: str) -> Iterator[dict[str, Any]]:
        w = watch.Watch()
        yield from w.stream(lister, resource_version=version, timeout_seconds=WATCH_SECONDS, **kwargs)

    # ---- one triple (lister, replace, apply) per kind -----------------------------------------------------------

    def _deployments(self, ns: str | None) -> tuple[Any, ...]:
        if ns is None:
            lister: Callable[..., Any] = self.custom.list_cluster_custom_object
            kwargs: dict[str, Any] = {"group": GROUP, "version": VERSION, "plural": PLURAL}
        else:
            lister = self.custom.list_namespaced_custom_object
            kwargs = {"group": GROUP, "version": VERSION, "plural": PLURAL, "namespace": ns}

        def replace(items: list[dict[str, Any]]) -> None:
            self.catalog.replace_deployments(ns, [deployment_from(o) for o in items])

        def apply(kind: str, obj: dict[str, Any]) -> None:
            d = deployment_from(obj)
            if kind == "DELETED":
                self.catalog.remove_deployment(d.namespace, d.name)
            else:
                self.catalog.set_deployment(
                    d.namespace, d.name, d.served_name, d.strategy, d.slo, d.cache, d.price, d.adapters, d.cascade
                )

        return f"InferenceDeployments in {ns or 'all namespaces'}", lister, kwargs, replace, apply

    def _slices(self, ns: str | None) -> tuple[Any, ...]:
        if ns is None:
            lister: Callable[..., Any] = self.discovery.list_endpoint_slice_for_all_namespaces
            kwargs: dict[str, Any] = {"label_selector": MANAGED_BY}
        else:
            lister = self.discovery.list_namespaced_endpoint_slice
            kwargs = {"label_selector": MANAGED_BY, "namespace": ns}

        def replace(items: list[Any]) -> None:
            self.catalog.replace_slices(ns, [s for s in map(slice_endpoints, items) if s is not None])

        def apply(kind: str, obj: Any) -> None:
            entry = slice_endpoints(obj)
            if entry is None:
                return
            namespace, deployment, name, endpoints = entry
            if kind == "DELETED":
                self.catalog.remove_slice(namespace, deployment, name)
            else:
                self.catalog.set_slice(namespace, deployment, name, endpoints)

        return f"EndpointSlices in {ns or 'all namespaces'}", lister, kwargs, replace, apply

    def _secrets(self, ns: str) -> tuple[Any, ...]:
        keys = self.keys
        assert keys is not None
        kwargs = {"namespace": ns, "label_selector": f"{API_KEYS_LABEL}=true"}

        def replace(items: list[Any]) -> None:
            keys.replace({f"{s.metadata.namespace}/{s.metadata.name}": secret_keys(s) for s in items})

        def apply(kind: str, s: Any) -> None:
            source = f"{s.metadata.namespace}/{s.metadata.name}"
            if kind == "DELETED":
                keys.remove_source(source)
            else:
                keys.set_source(source, secret_keys(s))

        return f"API-key Secrets in {ns}", self.core.list_namespaced_secret, kwargs, replace, apply


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class AnnotationDemand:
    """Record scale-from-zero demand on the InferenceDeployment itself; the operator scales it to one replica."""

    def __init__(self, api: client.ApiClient) -> None:
        self.custom = client.CustomObjectsApi(api)

    async def __call__(self, deployment: Deployment) -> None:
        body = {"metadata": {"annotations": {SCALE_FROM_ZERO_ANNOTATION: now_rfc3339()}}}
        await asyncio.to_thread(
            self.custom.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            deployment.namespace,
            PLURAL,
            deployment.name,
            body,
        )
        log.info("recorded scale-from-zero demand on %s/%s", deployment.namespace, deployment.name)


# ---- without Kubernetes ------------------------------------------------------------------------------------------


def parse_upstream(text: str, strategy: str = LEAST_OUTSTANDING) -> tuple[Deployment, tuple[Endpoint, ...]]:
    """`[namespace/]model=http://host:port[,http://host:port...]`: a fixed deployment, for local runs and tests."""
    name, sep, urls = text.partition("=")
    if not sep or not name or not urls:
        raise ValueError(f"--upstream {text!r}: expected [namespace/]model=http://host:port[,...]")
    namespace, _, served = name.partition("/") if "/" in name else ("default", "", name)
    endpoints = []
    for url in urls.split(","):
        parsed = urlparse(url.strip())
        if parsed.scheme != "http" or not parsed.hostname or parsed.path not in ("", "/"):
            raise ValueError(f"--upstream {text!r}: {url!r} is not http://host:port")
        endpoints.append(Endpoint(parsed.hostname, parsed.port or 80))
    return Deployment(namespace, served, served, strategy), tuple(endpoints)


def load_static(catalog: Catalog, upstreams: list[str], strategy: str = LEAST_OUTSTANDING) -> None:
    for text in upstreams:
        deployment, endpoints = parse_upstream(text, strategy)
        catalog.set_deployment(deployment.namespace, deployment.name, deployment.served_name, strategy)
        catalog.set_slice(deployment.namespace, deployment.name, "static", endpoints)
