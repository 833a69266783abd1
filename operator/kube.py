"""A small async Kubernetes client: server-side apply, get, list, delete, status patches.

Server-side apply makes reconciling idempotent: the operator sends the whole desired object under one field
manager every time, the API server creates or updates it, and a name can never be created twice. Credentials
come from the kubeconfig (or the in-cluster service account) through the `kubernetes` package's loader.
Every request is counted (`metrics.API_REQUESTS`), which is how API requests per reconcile are measured.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from dataclasses import dataclass
from typing import Any

import httpx
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from infleet.operator import api, metrics

FIELD_MANAGER = "infleet-operator"
MAX_IN_FLIGHT = 32  # concurrent requests (and connections) to the API server

# kind -> (plural, namespaced)
KINDS: dict[str, tuple[str, bool]] = {
    "Deployment": ("deployments", True),
    "StatefulSet": ("statefulsets", True),
    "LeaderWorkerSet": ("leaderworkersets", True),
    "Service": ("services", True),
    "PodDisruptionBudget": ("poddisruptionbudgets", True),
    "PersistentVolumeClaim": ("persistentvolumeclaims", True),
    "Pod": ("pods", True),
    "Event": ("events", True),
    "Node": ("nodes", False),
    "CustomResourceDefinition": ("customresourcedefinitions", False),
    api.KIND: (api.PLURAL, True),
}
API_VERSIONS = {
    "Deployment": "apps/v1",
    "StatefulSet": "apps/v1",
    "LeaderWorkerSet": "leaderworkerset.x-k8s.io/v1",
    "Service": "v1",
    "PodDisruptionBudget": "policy/v1",
    "PersistentVolumeClaim": "v1",
    "Pod": "v1",
    "Event": "v1",
    "Node": "v1",
    "CustomResourceDefinition": "apiextensions.k8s.io/v1",
    api.KIND: api.API_VERSION,
}


@dataclass
class KubeError(Exception):
    status: int
    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.status} {self.reason}: {self.message}"

    @property
    def retryable(self) -> bool:
        """Conflicts, throttling and server trouble pass; other 4xx mean the request itself is wrong."""
        return self.status in (0, 409, 429) or self.status >= 500


def path(kind: str, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
    plural, namespaced = KINDS[kind]
    version = API_VERSIONS[kind]
    base = f"/api/{version}" if "/" not in version else f"/apis/{version}"
    if namespaced and namespace:
        base += f"/namespaces/{namespace}"
    base += f"/{plural}"
    if name:
        base += f"/{name}"
    if subresource:
        base += f"/{subresource}"
    return base


class Kube:
    def __init__(self, configuration: k8s_client.Configuration, timeout: float = 30.0) -> None:
        ctx = ssl.create_default_context(cafile=configuration.ssl_ca_cert) if configuration.ssl_ca_cert else None
        if ctx is not None and configuration.cert_file:
            ctx.load_cert_chain(configuration.cert_file, configuration.key_file)
        if ctx is None and not configuration.verify_ssl:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        headers = {"Accept": "application/json", "User-Agent": "infleet-operator"}
        token = configuration.get_api_key_with_prefix("BearerToken") or configuration.get_api_key_with_prefix(
            "authorization"
        )
        if token:
            headers["Authorization"] = token
        self.http = httpx.AsyncClient(
            base_url=configuration.host,
            verify=ctx if ctx is not None else True,
            headers=headers,
            # waiting for a free connection is back-pressure, not failure: only the request itself times out
            timeout=httpx.Timeout(timeout, pool=None),
            limits=httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT),
        )
        # Requests beyond the connections wait here, not in httpx's pool: its queue is rescanned for every request
        # it assigns, which took a tenth of the operator's CPU with a few hundred queued (1,000 deployments at once).
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None) -> Kube:
        configuration = k8s_client.Configuration()
        try:
            k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        except k8s_config.ConfigException:
            k8s_config.load_incluster_config(client_configuration=configuration)
        return cls(configuration)

    async def close(self) -> None:
        await self.http.aclose()

    async def request(
        self,
        method: str,
        url: str,
        *,
        kind: str,
        params: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> dict[str, Any] | None:
        """One API call; None for a 404 on GET/DELETE, KubeError for any other failure."""
        metrics.API_REQUESTS.labels(verb=method, kind=kind).inc()
        headers = {"Content-Type": content_type} if body is not None else {}
        content = json.dumps(body) if body is not None else None
        queued = time.perf_counter()
        try:
            async with self._in_flight:
                sent = time.perf_counter()
                metrics.API_CLIENT_QUEUE_SECONDS.observe(sent - queued)
                response = await self.http.request(method, url, params=params, content=content, headers=headers)
                metrics.API_REQUEST_SECONDS.labels(method).observe(time.perf_counter() - sent)
        except httpx.HTTPError as err:
            raise KubeError(0, type(err).__name__, str(err)) from err
        if response.status_code == 404 and method in ("GET", "DELETE"):
            return None
        if response.status_code >= 400:
            try:
                detail = response.json()
                reason, message = detail.get("reason", ""), detail.get("message", response.text)
            except ValueError:
                reason, message = response.reason_phrase, response.text
            raise KubeError(response.status_code, reason, message)
        data: dict[str, Any] = response.json() if response.content else {}
        return data

    async def create(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """Create `obj` unless it exists (None then: someone made it first, and theirs stands)."""
        meta = obj["metadata"]
        try:
            return await self.request("POST", path(obj["kind"], meta.get("namespace")), kind=obj["kind"], body=obj)
        except KubeError as err:
            if err.status == 409:
                return None
            raise

    async def log_tail(self, namespace: str, pod: str, container: str, lines: int = 1) -> str | None:
        """The last lines a container wrote (`kubectl logs --tail`); None when the pod or its log is not there."""
        metrics.API_REQUESTS.labels(verb="GET", kind="Pod/log").inc()
        url = f"/api/v1/namespaces/{namespace}/pods/{pod}/log"
        params = {"container": container, "tailLines": str(lines)}
        try:
            async with self._in_flight:
                response = await self.http.get(url, params=params)
        except httpx.HTTPError as err:
            raise KubeError(0, type(err).__name__, str(err)) from err
        if response.status_code in (400, 404):  # not started yet, or gone
            return None
        if response.status_code >= 400:
            raise KubeError(response.status_code, response.reason_phrase, response.text)
        return response.text

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply: create or update to exactly `obj` (fields this manager no longer sends are removed)."""
        meta = obj["metadata"]
        url = path(obj["kind"], meta.get("namespace"), meta["name"])
        params = {"fieldManager": FIELD_MANAGER, "force": "true"}
        out = await self.request(
            "PATCH", url, kind=obj["kind"], params=params, body=obj, content_type="application/apply-patch+yaml"
        )
        assert out is not None
        return out

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return await self.request("GET", path(kind, namespace, name), kind=kind)

    async def list(self, kind: str, namespace: str | None, selector: str | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": selector} if selector else None
        out = await self.request("GET", path(kind, namespace), kind=kind, params=params)
        items = list((out or {}).get("items", []))
        for item in items:  # list responses leave kind out of their items; the rest of the code relies on it
            item.setdefault("kind", kind)
            item.setdefault("apiVersion", API_VERSIONS[kind])
        return items

    async def delete(self, kind: str, namespace: str | None, name: str, uid: str | None = None) -> bool:
        """Delete in the background; with `uid`, only that incarnation (a precondition guards against races).
        False when there was nothing to delete."""
        body: dict[str, Any] = {"propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            return await self.request("DELETE", path(kind, namespace, name), kind=kind, body=body) is not None
        except KubeError as err:
            if err.status != 409:  # the precondition failed: someone already replaced it
                raise
            return False

    async def apply_status(
        self, namespace: str, name: str, status: api.InferenceDeploymentStatus, manager: str = FIELD_MANAGER
    ) -> dict[str, Any] | None:
        """Server-side apply to an InferenceDeployment's status subresource under `manager`.

        Conditions are a list-map keyed by type, so each manager (the operator's status writer, the autoscaler) owns
        only the conditions it sends, and neither can wipe the other's with a stale copy of the list."""
        url = path(api.KIND, namespace, name, "status")
        metrics.STATUS_WRITES.labels(manager).inc()
        body = {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "metadata": {"name": name, "namespace": namespace},
            "status": status.wire(),
        }
        try:
            return await self.request(
                "PATCH",
                url,
                kind=api.KIND,
                params={"fieldManager": manager, "force": "true"},
                body=body,
                content_type="application/apply-patch+yaml",
            )
        except KubeError as err:
            if err.status == 404:  # deleted meanwhile
                return None
            raise
