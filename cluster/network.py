"""The pod network: one network namespace holding every launched pod's IP, joined to the host by a veth pair.

Kubernetes refuses loopback addresses in EndpointSlices, so pods cannot simply take 127.x addresses. Instead
pods get addresses from a /16 that lives only on this machine: the host end of the veth holds the first
address (the pods' way to the API server), launched pods' addresses sit on the namespace end, and KWOK's
pretend pods take the upper half of the range (traffic to them goes nowhere but into the namespace). No
address of the range exists outside this machine, and nothing is routed beyond the veth pair.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network


@dataclass(frozen=True)
class PodNetwork:
    name: str  # the network namespace; also the stem of the veth names (at most 15 characters each)
    cidr: IPv4Network

    @classmethod
    def from_env(cls, port_base: int) -> PodNetwork:
        return cls(f"infleet{port_base}", IPv4Network(os.environ.get("INFLEET_POD_CIDR", "10.244.0.0/16")))

    @property
    def host_ip(self) -> IPv4Address:
        return self.cidr[1]

    @property
    def launched_range(self) -> IPv4Network:
        """The lower half, for pods the launcher runs (minus the network and host addresses)."""
        return next(self.cidr.subnets(prefixlen_diff=1))

    @property
    def kwok_range(self) -> IPv4Network:
        return list(self.cidr.subnets(prefixlen_diff=1))[1]

    @property
    def host_if(self) -> str:
        return f"{self.name}h"

    @property
    def pod_if(self) -> str:
        return f"{self.name}p"

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.name}"

    def exec_prefix(self) -> list[str]:
        """Prepended to a pod's command: runs it inside the pod network (nsenter execs, so the pid stays)."""
        return ["nsenter", f"--net={self.netns_path}"]

    def exists(self) -> bool:
        return os.path.exists(self.netns_path)

    def up(self) -> None:
        if self.exists():
            return
        prefix = self.cidr.prefixlen
        for cmd in (
            ["ip", "netns", "add", self.name],
            ["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.pod_if, "netns", self.name],
            ["ip", "addr", "add", f"{self.host_ip}/{prefix}", "dev", self.host_if],
            ["ip", "link", "set", self.host_if, "up"],
            ["ip", "-n", self.name, "link", "set", "lo", "up"],
            ["ip", "-n", self.name, "link", "set", self.pod_if, "up"],
            ["ip", "-n", self.name, "route", "add", f"{self.host_ip}/32", "dev", self.pod_if],
        ):
            _ip(cmd)

    def down(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)

    def add_ip(self, ip: str) -> None:
        done = subprocess.run(
            ["ip", "-n", self.name, "addr", "add", f"{ip}/32", "dev", self.pod_if], capture_output=True, text=True
        )
        if done.returncode != 0 and not ("File exists" in done.stderr or "already assigned" in done.stderr):
            raise RuntimeError(f"cannot add pod IP {ip}: {done.stderr.strip()}")


def _ip(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pod network set-up failed: {' '.join(cmd)}: {done.stderr.strip()} (root is required)")
