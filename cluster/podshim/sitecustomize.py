"""Loaded by every Python process the launcher starts for a pod (it is on the pod's PYTHONPATH).

Two things a kubelet's pod gets from its own network namespace and kube-dns, done here in Python:

- Binding: all launched pods share one pod network (see network.py), so a server binding the wildcard address
  (``""``, ``0.0.0.0``) would take the port on every pod's IP. Wildcard binds become binds on ``POD_IP``.
- Cluster DNS: names under ``.svc`` / ``.svc.cluster.local`` (and ``<svc>.<ns>`` forms that end in ``.svc``)
  are answered by the node agent (``INFLEET_CLUSTER_DNS``), with pod IPs, before the system resolver is asked.
"""

import json
import os
import socket
import urllib.parse
import urllib.request
from typing import Any

_POD_IP = os.environ.get("POD_IP", "")
_DNS = os.environ.get("INFLEET_CLUSTER_DNS", "")
_NAMESPACE = os.environ.get("POD_NAMESPACE", "default")
_WILDCARDS = ("", "0.0.0.0", "::")

if _POD_IP:
    _bind = socket.socket.bind

    def _bind_pod_ip(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple) and address[0] in _WILDCARDS:
            if self.family == socket.AF_INET6:
                # Pods have an IPv4 address only; a dual-stack server's IPv6 socket gets a private port on ::1.
                address = ("::1", 0, *address[2:])
            else:
                address = (_POD_IP, *address[1:])
        _bind(self, address)

    socket.socket.bind = _bind_pod_ip  # type: ignore[method-assign,assignment]


def _cluster_name(host: Any) -> bool:
    if not isinstance(host, str):
        return False
    name = host.rstrip(".")
    return name.endswith((".svc", ".svc.cluster.local"))


def _lookup(host: str) -> list[str]:
    """Every ready address of the name (a headless Service has one per ready pod), as kube-dns's A records."""
    query = urllib.parse.urlencode({"name": host, "namespace": _NAMESPACE})
    with urllib.request.urlopen(f"{_DNS}?{query}", timeout=5) as resp:
        addresses = json.load(resp)
    if not addresses:
        raise socket.gaierror(socket.EAI_NONAME, f"cluster DNS: no ready address for {host}")
    return [str(a) for a in addresses]


if _DNS:
    _getaddrinfo = socket.getaddrinfo
    _gethostbyname = socket.gethostbyname

    def _cluster_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _cluster_name(host):
            return _getaddrinfo(host, *args, **kwargs)
        return [info for address in _lookup(host) for info in _getaddrinfo(address, *args, **kwargs)]

    def _cluster_gethostbyname(host: str) -> str:
        return _lookup(host)[0] if _cluster_name(host) else _gethostbyname(host)

    socket.getaddrinfo = _cluster_getaddrinfo
    socket.gethostbyname = _cluster_gethostbyname
