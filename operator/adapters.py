"""LoRA adapters loaded into running replicas: each ready replica of an infleet-engine deployment is made to serve
exactly `spec.adapters`, through the runtime's own API, without restarting it.

The pod template names no adapter (resources.live_adapters), so adding, removing or moving an adapter to another
revision changes no pod. Every `INTERVAL` seconds, per deployment with adapters, the operator asks each ready
replica what it serves (`GET /v1/models`: the adapters are the cards with a `parent`), unloads what the spec no
longer lists or lists at another URI or revision, and loads what is missing (`POST /v1/load_lora_adapter` with the
URI and revision; the runtime fetches a remote adapter into its model cache itself). A replica that restarted or
just started is caught up the same way; until then the gateway sends that adapter's requests to another replica
(a 404 for an adapter is retried elsewhere). What each replica serves goes into `status.adapters`, with the
runtime's reason when a load was refused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import httpx
import kopf
import pydantic

from infleet.api import adapters as adapter_api
from infleet.operator import api, reconcile, resources, status_writer
from infleet.operator.kube import KubeError
from infleet.operator.state import OperatorState

INTERVAL = 10.0
LOAD_TIMEOUT = 900.0  # a remote adapter is downloaded within the load request
log = logging.getLogger(__name__)

Wanted = dict[str, tuple[str, str | None]]  # adapter name -> (uri, revision)


def wanted(spec: api.InferenceDeploymentSpec) -> Wanted:
    return {a.name: (a.uri, a.revision) for a in spec.adapters} if resources.live_adapters(spec) else {}


def served(models: Mapping[str, Any]) -> Wanted:
    """The adapters a runtime's `/v1/models` answer lists: name -> (where it was loaded from, its revision)."""
    return {
        str(c["id"]): (str(c.get("root") or ""), c.get("revision"))
        for c in models.get("data") or []
        if isinstance(c, dict) and c.get("parent")
    }


def plan(want: Wanted, have: Wanted) -> tuple[list[str], list[str]]:
    """(names to unload, names to load): what the spec dropped or moved goes, what it lists and the replica lacks
    comes."""
    unload = sorted(n for n, source in have.items() if want.get(n) != source)
    load = sorted(n for n in want if have.get(n) != want[n])
    return unload, load


def ready(pod: Mapping[str, Any]) -> bool:
    st = pod.get("status") or {}
    conditions = {c.get("type"): c.get("status") for c in st.get("conditions") or []}
    return bool(st.get("podIP")) and conditions.get("Ready") == "True" and not pod["metadata"].get("deletionTimestamp")


def _refusal(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


async def converge(http: httpx.AsyncClient, base: str, want: Wanted) -> tuple[list[str], str | None]:
    """Make the runtime at `base` serve `want`: (the adapter names it serves after, why any is missing)."""
    answer = await http.get(f"{base}/v1/models")
    answer.raise_for_status()
    have = served(answer.json())
    unload, load = plan(want, have)
    problems = []
    for name in unload:
        r = await http.post(f"{base}{adapter_api.UNLOAD_PATH}", json={"lora_name": name})
        if r.status_code not in (200, 404):  # 404: gone already
            problems.append(f"{name}: unload refused ({r.status_code}): {_refusal(r)}")
            continue
        have.pop(name, None)
    for name in load:
        if name in have:  # its unload was refused: it stays as it is
            continue
        uri, revision = want[name]
        body = adapter_api.load_body(name, uri, revision)
        r = await http.post(f"{base}{adapter_api.LOAD_PATH}", json=body, timeout=LOAD_TIMEOUT)
        if r.status_code == 200:
            have[name] = want[name]
        else:
            problems.append(f"{name}: {_refusal(r)}")
    return sorted(have), "; ".join(problems) or None


async def replica(http: httpx.AsyncClient, pod: Mapping[str, Any], want: Wanted) -> dict[str, Any]:
    """One replica's row of `status.adapters`, after bringing it to `want`."""
    base = f"http://{pod['status']['podIP']}:{resources.PORT}"
    try:
        loaded, message = await converge(http, base, want)
    except (httpx.HTTPError, ValueError) as e:  # unreachable, or not a runtime's answer: tried again next interval
        return {"pod": pod["metadata"]["name"], "loaded": [], "message": f"{base}: {type(e).__name__}: {e}"}
    return {"pod": pod["metadata"]["name"], "loaded": loaded, "message": message}


async def sync(memo: OperatorState, body: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """Bring every ready replica of the deployment to its spec's adapters and hand the rows to the status writer;
    None when the spec cannot be read (the reconcile reports that)."""
    try:
        spec = api.InferenceDeploymentSpec.model_validate(body["spec"])
    except pydantic.ValidationError:
        return None
    owner = reconcile.owner_of(body)
    try:
        pods = await memo.client().list("Pod", owner.namespace, resources.selector_string(owner))
    except KubeError as e:
        raise kopf.TemporaryError(f"listing the replicas: {e}", delay=INTERVAL) from None
    want = wanted(spec)
    async with httpx.AsyncClient(timeout=10.0) as http:
        rows = list(await asyncio.gather(*(replica(http, p, want) for p in pods if ready(p))))
    rows.sort(key=lambda r: r["pod"])
    if not want and not any(r["loaded"] for r in rows):
        rows = []  # no adapters wanted or served: the field empties, and the timer stops (_has_adapters)
    try:
        await status_writer.submit(memo, body, {"adapters": {"adapters": rows}}, now=True)
    except KubeError as e:
        raise kopf.TemporaryError(f"writing status.adapters: {e}", delay=INTERVAL) from None
    return rows


def _has_adapters(spec: Mapping[str, Any], status: Mapping[str, Any], **_: Any) -> bool:
    """Adapters in the spec, or rows in status still to clear; vLLM's adapters are in its pod template."""
    engine = (spec.get("runtime") or {}).get("engine", "infleet")
    return engine != "vllm" and bool(spec.get("adapters") or status.get("adapters"))


@kopf.timer(api.GROUP, api.VERSION, api.PLURAL, id="adapters", interval=INTERVAL, when=_has_adapters)
async def adapters(body: kopf.Body, memo: OperatorState, **_: Any) -> None:
    if not body["metadata"].get("deletionTimestamp"):
        await sync(memo, body)
