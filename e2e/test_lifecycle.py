"""The product's life on the cluster under test (the local fleet, or one INFLEET_E2E_KUBECONFIG names), in order:
install and chat, heal a killed runtime, survive a killed operator, roll out a tier change without failing a
request, and uninstall leaving nothing behind."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import kubernetes.client
import numpy as np
import openai
import pytest
import tritonclient.http as triton

from infleet.cluster.controlplane import Fleet, process_alive
from infleet.cluster.stack import Stack
from infleet.cluster.testing import wait_for
from infleet.operator.__main__ import PEERING_NAME

from .conftest import DEMO_NAMESPACE, RELEASE, Cluster, launched_pid

pytestmark = [pytest.mark.cluster, pytest.mark.model, pytest.mark.slow]

NAMESPACE = DEMO_NAMESPACE
NAME = "smollm2"


@pytest.fixture(scope="module")
def served(stack: Stack, smollm2: Callable[[str], dict[str, Any]]) -> Iterator[str]:
    """The SmolLM2 example applied in its own namespace; yields the served model name."""
    idep = smollm2(NAME)
    stack.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}, idep)
    stack.wait_ready(NAMESPACE, NAME, quiet=True)
    yield str(idep["spec"]["model"]["servedName"])


def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.gateway_url()}/v1", api_key="unused", max_retries=0, timeout=120)


def chat(stack: Stack, model: str, text: str = "What is the capital of France?") -> str:
    reply = client(stack).chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], max_tokens=16, temperature=0
    )
    return str(reply.choices[0].message.content)


def runtime_pods(fleet: Cluster) -> list:
    return list(fleet.core.list_namespaced_pod(NAMESPACE, label_selector=f"infleet.dev/deployment={NAME}").items)


def test_install_and_chat_through_the_gateway(stack: Stack, served: str) -> None:
    assert "Paris" in chat(stack, served)
    stream = client(stack).chat.completions.create(
        model=served, messages=[{"role": "user", "content": "Count to five."}], max_tokens=12, stream=True
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len(pieces) > 2 and "".join(pieces).strip()
    models = [m.id for m in client(stack).models.list().data]
    assert served in models


def test_kserve_v2_through_the_gateway(stack: Stack, served: str) -> None:
    url = stack.gateway_url().removeprefix("http://")
    kserve = triton.InferenceServerClient(url=url)
    text = triton.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"The capital of France is"], dtype=object))
    result = kserve.infer(served, [text], outputs=[triton.InferRequestedOutput("text_output")])
    assert result.as_numpy("text_output")[0]


def test_a_killed_runtime_process_is_healed(stack: Stack, fleet: Cluster, launcher: Fleet, served: str) -> None:
    pod = runtime_pods(fleet)[0]
    os.kill(launched_pid(launcher, pod), signal.SIGKILL)
    wait_for(
        lambda: (
            fleet.core.read_namespaced_pod(pod.metadata.name, NAMESPACE).status.container_statuses[0].restart_count >= 1
        ),
        what="the runtime's restart",
    )
    stack.wait_ready(NAMESPACE, NAME, timeout=600, quiet=True)
    assert "Paris" in wait_for(lambda: _try_chat(stack, served), timeout=300, what="a chat after the restart")


def _try_chat(stack: Stack, model: str) -> str | None:
    try:
        return chat(stack, model)
    except openai.APIError:
        return None


def working_operator(stack: Stack, fleet: Cluster) -> kubernetes.client.V1Pod:
    """The operator replica doing the work: the highest priority in the chart's KopfPeering (two replicas, one
    leader); the only replica when the chart runs one without peering."""
    pods = fleet.core.list_namespaced_pod(stack.namespace, label_selector="app.kubernetes.io/component=operator").items
    live = {p.metadata.name: p for p in pods if p.status.phase == "Running"}
    try:
        peering = json.loads(stack.kubectl("get", "kopfpeering", PEERING_NAME, "-n", stack.namespace, "-o", "json"))
    except (Exception, SystemExit):  # no peering object (kubectl's failure exits): a single standalone replica
        peering = {}
    peers = {name: peer for name, peer in (peering.get("status") or {}).items() if name in live}
    if not peers:
        return next(iter(live.values()))
    return live[max(peers, key=lambda name: peers[name].get("priority", 0))]


def test_killing_the_operator_mid_reconcile_converges_without_duplicates(
    stack: Stack, fleet: Cluster, external: bool, served: str
) -> None:
    pod = working_operator(stack, fleet)
    owned = f"infleet.dev/deployment={NAME}"  # other tests' deployments share the demo namespace
    (before,) = fleet.apps.list_namespaced_deployment(NAMESPACE, label_selector=owned).items
    stack.kubectl("scale", "idep", NAME, "-n", NAMESPACE, "--replicas=2")
    if external:  # no pid to kill: the pod goes at once, without a grace period, as a crashed node would take it
        stack.kubectl("delete", "pod", pod.metadata.name, "-n", stack.namespace, "--grace-period=0", "--force")
    else:
        os.kill(launched_pid(fleet.fleet, pod, "operator"), signal.SIGKILL)

    def scaled() -> list[kubernetes.client.V1Deployment] | None:
        """The Deployments once one of them asks for two replicas and has two ready of its latest template (the
        count of Running pods alone is also two in the middle of a surge rollout)."""
        found = fleet.apps.list_namespaced_deployment(NAMESPACE, label_selector=owned).items
        done = [d for d in found if d.spec.replicas == 2 and d.status.updated_replicas == d.status.ready_replicas == 2]
        return found if done and (done[0].status.replicas or 0) == 2 else None

    deployments = wait_for(scaled, timeout=600, what="two ready runtime pods after the operator restarted")
    assert len(deployments) == 1
    services = fleet.core.list_namespaced_service(NAMESPACE, label_selector=owned).items
    assert len([s for s in services if s.spec.cluster_ip != "None"]) == 1
    # the restarted operator renders the same pod template: scaling is not a rollout
    after = deployments[0].metadata.annotations
    revision = "deployment.kubernetes.io/revision"
    assert after[revision] == before.metadata.annotations[revision], replica_sets(fleet, owned)
    stack.kubectl("scale", "idep", NAME, "-n", NAMESPACE, "--replicas=1")
    wait_for(lambda: len(runtime_pods(fleet)) == 1, timeout=300, what="back to one runtime pod")


def replica_sets(fleet: Cluster, selector: str) -> str:
    """The ReplicaSets' revisions and templates, for a failure's message."""
    found = fleet.apps.list_namespaced_replica_set(NAMESPACE, label_selector=selector).items
    api = kubernetes.client.ApiClient()
    return "\n".join(
        f"{rs.metadata.annotations.get('deployment.kubernetes.io/revision')} {rs.metadata.creation_timestamp} "
        f"{json.dumps(api.sanitize_for_serialization(rs.spec.template), sort_keys=True)}"
        for rs in found
    )


def test_a_tier_change_rolls_out_without_a_failed_request(stack: Stack, fleet: Cluster, served: str) -> None:
    failures: list[str] = []
    answered = 0
    stop = threading.Event()

    def load() -> None:
        nonlocal answered
        while not stop.is_set():
            try:
                chat(stack, served, "Say hi.")
                answered += 1
            except openai.APIError as err:
                failures.append(repr(err))

    worker = threading.Thread(target=load)
    worker.start()
    try:
        stack.kubectl(
            "patch", "idep", NAME, "-n", NAMESPACE, "--type=merge", "-p", '{"spec": {"quantization": {"tier": "int4"}}}'
        )
        wait_for(
            lambda: (
                [
                    p
                    for p in runtime_pods(fleet)
                    if p.metadata.labels.get("infleet.dev/tier") == "int4" and p.metadata.deletion_timestamp is None
                ]
                and all(p.metadata.labels.get("infleet.dev/tier") == "int4" for p in runtime_pods(fleet))
            ),
            timeout=900,
            what="the int4 rollout to replace every pod",
        )
        stack.wait_ready(NAMESPACE, NAME, timeout=600, quiet=True)
    finally:
        stop.set()
        worker.join(timeout=180)
    assert answered > 0
    assert failures == []
    assert stack.idep(NAMESPACE, NAME)["status"]["tier"] == "int4"


def test_uninstall_and_namespace_deletion_leave_nothing(
    stack: Stack, fleet: Cluster, external: bool, served: str
) -> None:
    """Everything the release made goes; on the local fleet, the processes its pods ran are gone too."""
    # pods the rollout before left terminating have had their processes stopped already (and their pid files gone)
    pods = [p for p in runtime_pods(fleet) if p.metadata.deletion_timestamp is None and p.status.phase == "Running"]
    assert pods
    pids = [] if external else [launched_pid(fleet.fleet, p) for p in pods]
    # the deployments go first, while the operator runs (the chart's pre-delete hook refuses otherwise: its own test
    # is tests/chart/test_uninstall_cluster.py); their namespace is gone then, so the hook has nowhere to look
    fleet.core.delete_namespace(NAMESPACE)
    wait_for(
        lambda: NAMESPACE not in {n.metadata.name for n in fleet.core.list_namespace().items},
        timeout=300,
        what="the demo namespace deleted while the operator runs",
    )
    stack.helm("uninstall", stack.release, f"--namespace={stack.namespace}", "--wait", "--no-hooks")
    fleet.core.delete_namespace(stack.namespace)

    def gone() -> bool:
        names = {n.metadata.name for n in fleet.core.list_namespace().items}
        return NAMESPACE not in names and stack.namespace not in names

    wait_for(gone, timeout=300, what="both namespaces to be deleted")
    rbac = kubernetes.client.RbacAuthorizationV1Api(fleet.api)
    leftovers = [c.metadata.name for c in rbac.list_cluster_role().items if c.metadata.name.startswith(f"{RELEASE}-")]
    assert leftovers == []
    if not external:
        assert not any(process_alive(pid) for pid in pids)
        pods_dir = fleet.fleet.dir / "pods"
        assert not [
            d
            for d in pods_dir.glob(f"{NAMESPACE}_*")
            if any(process_alive(int(p.read_text())) for p in d.glob("*.pid"))
        ]
