"""Loaded by every Python process the launcher starts for a pod (it is on the pod's PYTHONPATH).

All pods share the machine's network stack, so a server that binds the wildcard address (``""``,
``0.0.0.0``) would take the port on every address and collide with the next pod. A kubelet's pod has a
network namespace of its own; here the same effect comes from turning wildcard binds into binds on the
pod's own loopback IP (``POD_IP``), which every Service, EndpointSlice and Prometheus target points at.
"""

import os
import socket
from typing import Any

_POD_IP = os.environ.get("POD_IP", "")
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
