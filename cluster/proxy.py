"""A userspace Service proxy: every ClusterIP Service port listens on its ClusterIP (a loopback address) and
forwards each TCP connection to one ready endpoint from the Service's EndpointSlices, round robin."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import defaultdict
from typing import Any

from kubernetes import client, watch

Key = tuple[str, int]  # (cluster IP, port)


class ServiceProxy:
    def __init__(self, api: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api)
        self.discovery = client.DiscoveryV1Api(api)
        self.loop = asyncio.new_event_loop()
        self.servers: dict[Key, asyncio.Server] = {}
        # (namespace, service) -> {port name: (cluster ip, port)}; endpoints: (namespace, service) -> slices
        self.services: dict[tuple[str, str], dict[str, Key]] = {}
        self.slices: dict[tuple[str, str], dict[str, Any]] = defaultdict(dict)
        self.counter = itertools.count()

    def start(self) -> None:
        threading.Thread(target=self.loop.run_forever, daemon=True, name="proxy-loop").start()
        threading.Thread(target=self._watch_services, daemon=True, name="proxy-services").start()
        threading.Thread(target=self._watch_slices, daemon=True, name="proxy-slices").start()

    # --- watches (threads) ---------------------------------------------------------------------------
    def _watch_services(self) -> None:
        while True:
            try:
                for event in watch.Watch().stream(self.core.list_service_for_all_namespaces, timeout_seconds=300):
                    svc = event["object"]
                    key = (svc.metadata.namespace, svc.metadata.name)
                    ip = svc.spec.cluster_ip
                    if event["type"] == "DELETED" or not ip or ip == "None":
                        ports: dict[str, Key] = {}
                    else:
                        ports = {
                            (p.name or ""): (ip, p.port) for p in svc.spec.ports or [] if p.protocol in (None, "TCP")
                        }
                    old = self.services.get(key, {})
                    self.services[key] = ports
                    for gone in set(old.values()) - set(ports.values()):
                        asyncio.run_coroutine_threadsafe(self._close(gone), self.loop)
                    for name, addr in ports.items():
                        if addr not in self.servers:
                            asyncio.run_coroutine_threadsafe(self._listen(addr, key, name), self.loop)
            except Exception:  # a dropped watch is restarted, as informers do
                threading.Event().wait(1)

    def _watch_slices(self) -> None:
        while True:
            try:
                for event in watch.Watch().stream(
                    self.discovery.list_endpoint_slice_for_all_namespaces, timeout_seconds=300
                ):
                    es = event["object"]
                    svc = (es.metadata.labels or {}).get("kubernetes.io/service-name")
                    if not svc:
                        continue
                    slices = self.slices[(es.metadata.namespace, svc)]
                    if event["type"] == "DELETED":
                        slices.pop(es.metadata.name, None)
                    else:
                        slices[es.metadata.name] = es
            except Exception:
                threading.Event().wait(1)

    # --- forwarding (event loop) ---------------------------------------------------------------------
    def _endpoints(self, service: tuple[str, str], port_name: str) -> list[Key]:
        out = []
        for es in list(self.slices.get(service, {}).values()):
            port = next((p.port for p in es.ports or [] if (p.name or "") == port_name), None)
            if port is None:
                continue
            for ep in es.endpoints or []:
                if ep.conditions is None or ep.conditions.ready is not False:
                    out += [(addr, port) for addr in ep.addresses]
        return out

    async def _listen(self, addr: Key, service: tuple[str, str], port_name: str) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            targets = self._endpoints(service, port_name)
            await _splice(reader, writer, targets[next(self.counter) % len(targets)] if targets else None)

        try:
            self.servers[addr] = await asyncio.start_server(handle, addr[0], addr[1], reuse_address=True)
        except OSError:
            pass  # the port is taken on that address; the Service stays reachable through its endpoints

    def forward(self, listen: Key, target: Key) -> None:
        """A plain TCP forward, for pods to reach the API server from the pod network."""

        async def serve() -> None:
            self.servers[listen] = await asyncio.start_server(
                lambda r, w: _splice(r, w, target), listen[0], listen[1], reuse_address=True
            )

        asyncio.run_coroutine_threadsafe(serve(), self.loop).result(timeout=10)

    async def _close(self, addr: Key) -> None:
        server = self.servers.pop(addr, None)
        if server is not None:
            server.close()


async def _splice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: Key | None) -> None:
    """Connect to `target` and copy bytes both ways until both sides are done."""
    if target is None:
        writer.close()
        return
    try:
        up_reader, up_writer = await asyncio.open_connection(*target)
    except OSError:
        writer.close()
        return
    await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
    for w in (writer, up_writer):
        w.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()
