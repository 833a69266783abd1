"""Build the local fleet's Go binaries once and cache them under ~/.cache/infleet/, keyed by version.

Kubernetes cannot be `go install`ed (its go.mod replaces the staging modules with local paths), so
it is built from a scratch module that requires k8s.io/kubernetes and pins every `k8s.io/* v0.0.0`
requirement to the matching published v0.N.0. etcd comes from the same module graph, so it is the
version Kubernetes itself was tested with. A cold build takes many minutes on two cores: progress is
printed as packages compiled out of the total.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.37.0"
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v3.21.4"
# SeaweedFS publishes no module-compatible release tags: this is the commit of its 4.53 release on the Go proxy
SEAWEEDFS_VERSION = "v0.0.0-20261109003541-7506e5f91cd6"
# LeaderWorkerSet: the controller multi-node groups render to when its CRD is installed (docs/multi-node.md)
LWS_VERSION = "v0.8.0"
LWS_CRD = "leaderworkerset.x-k8s.io_leaderworkersets.yaml"
LWS_ENV = "INFLEET_FLEET_LWS"  # set: the fleet builds and runs LWS (opt-in: a long build)

CACHE = Path(os.environ.get("INFLEET_CACHE", Path.home() / ".cache" / "infleet"))
KUBE_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
KWOK_STAGES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
)

# Logs: which file holds a pod's container output (`kubectl logs`); Exec: where `kubectl exec` runs a command
KWOK_CRDS = ("kwok.x-k8s.io_logs.yaml", "kwok.x-k8s.io_execs.yaml")

ETCD_MAIN = """package main

import (
\t"os"

\t"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
"""


@dataclass(frozen=True)
class Binaries:
    """Paths of every binary the local fleet runs."""

    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    etcd: Path
    kwok: Path
    kwok_stages: tuple[Path, ...]
    kwok_crds: tuple[Path, ...]
    helm: Path
    weed: Path
    lws: Path
    lws_crd: Path


def kube_dir() -> Path:
    return CACHE / "bin" / f"kubernetes-{KUBERNETES_VERSION}"


def binaries() -> Binaries:
    k = kube_dir()
    kw = CACHE / "bin" / f"kwok-{KWOK_VERSION}"
    return Binaries(
        kube_apiserver=k / "kube-apiserver",
        kube_controller_manager=k / "kube-controller-manager",
        kube_scheduler=k / "kube-scheduler",
        kubectl=k / "kubectl",
        etcd=k / "etcd",
        kwok=kw / "kwok",
        kwok_stages=tuple(kw / "stages" / Path(s).name for s in KWOK_STAGES),
        kwok_crds=tuple(kw / "crds" / Path(c).name for c in KWOK_CRDS),
        helm=CACHE / "bin" / f"helm-{HELM_VERSION}" / "helm",
        weed=CACHE / "bin" / f"seaweedfs-{SEAWEEDFS_VERSION}" / "weed",
        lws=CACHE / "bin" / f"lws-{LWS_VERSION}" / "manager",
        lws_crd=CACHE / "bin" / f"lws-{LWS_VERSION}" / "crds" / LWS_CRD,
    )


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(GOTOOLCHAIN="local", CGO_ENABLED="0", GOFLAGS="-buildvcs=false")
    return env


def _log(msg: str) -> None:
    print(f"[infleet build] {msg}", flush=True)


def _run(cmd: list[str], cwd: Path, what: str) -> str:
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=_go_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"infleet: {what} failed ({' '.join(cmd)}), exit {proc.returncode}")
    _log(f"{what}: done in {time.monotonic() - started:.0f}s")
    return proc.stdout


def _go_build(packages: list[str], out: Path, cwd: Path, ldflags: str, what: str) -> None:
    """`go build -v`, counting compiled packages against `go list -deps` for a progress line."""
    deps = _run(["go", "list", "-mod=mod", "-deps", *packages], cwd, f"{what}: resolving packages")
    total = len(deps.split())
    out.mkdir(parents=True, exist_ok=True)
    cmd = ["go", "build", "-mod=mod", "-v", "-trimpath", "-ldflags", ldflags, "-o", str(out) + "/", *packages]
    started = time.monotonic()
    done = 0
    stop = threading.Event()

    def ticker() -> None:
        while not stop.wait(15):
            _log(
                f"{what}: {done}/{total} packages compiled (cached ones are not counted), "
                f"{time.monotonic() - started:.0f}s so far"
            )

    thread = threading.Thread(target=ticker, daemon=True)
    thread.start()
    proc = subprocess.Popen(cmd, cwd=cwd, env=_go_env(), stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    errors: list[str] = []
    for line in proc.stderr:
        if re.match(r"^[\w.\-/]+$", line.strip()):
            done += 1
        else:
            errors.append(line)
    rc = proc.wait()
    stop.set()
    if rc != 0:
        sys.stderr.write("".join(errors[-60:]))
        raise SystemExit(f"infleet: {what} failed: {' '.join(cmd)} (exit {rc})")
    _log(f"{what}: built in {time.monotonic() - started:.0f}s")


def _version_ldflags() -> str:
    major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={KUBERNETES_VERSION}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
        ]
    return " ".join(flags)


def _scratch_module() -> Path:
    """A module requiring k8s.io/kubernetes with its staging modules pinned to published versions."""
    src = CACHE / "src" / f"kubernetes-{KUBERNETES_VERSION}"
    (src / "etcd").mkdir(parents=True, exist_ok=True)
    (src / "etcd" / "main.go").write_text(ETCD_MAIN)
    if (src / "go.mod").exists() and "replace" in (src / "go.mod").read_text():
        return src
    (src / "go.mod").write_text("module infleet.local/fleet\n\ngo 1.26\n")
    info = _run(
        ["go", "mod", "download", "-json", f"k8s.io/kubernetes@{KUBERNETES_VERSION}"],
        src,
        "downloading k8s.io/kubernetes",
    )
    gomod = Path(re.search(r'"GoMod":\s*"([^"]+)"', info).group(1))  # type: ignore[union-attr]
    staging = re.findall(r"^\s+(k8s\.io/[\w.\-]+) v0\.0\.0$", gomod.read_text(), re.M)
    minor = KUBERNETES_VERSION.lstrip("v").split(".")[1]
    edits = [f"-require=k8s.io/kubernetes@{KUBERNETES_VERSION}"]
    edits += [f"-replace={m}={m}@v0.{minor}.0" for m in staging]
    _run(["go", "mod", "edit", *edits], src, f"pinning {len(staging)} staging modules")
    return src


def build_kubernetes() -> None:
    bins = binaries()
    if all(
        p.exists()
        for p in (bins.kube_apiserver, bins.kube_controller_manager, bins.kube_scheduler, bins.kubectl, bins.etcd)
    ):
        return
    src = _scratch_module()
    _run(
        ["go", "get", f"k8s.io/kubernetes@{KUBERNETES_VERSION}", "go.etcd.io/etcd/server/v3"],
        src,
        "resolving the module graph",
    )
    packages = [f"k8s.io/kubernetes/cmd/{b}" for b in KUBE_BINARIES] + ["./etcd"]
    tmp = kube_dir().parent / (kube_dir().name + ".partial")
    _go_build(packages, tmp, src, _version_ldflags(), f"Kubernetes {KUBERNETES_VERSION} + etcd")
    if kube_dir().exists():
        shutil.rmtree(kube_dir())
    tmp.rename(kube_dir())


def _build_go_tool(name: str, module: str, version: str, package: str, dest: Path, ldflags: str) -> Path:
    """`go build` one command of a released module in a scratch module of its own; returns that module's dir."""
    src = CACHE / "src" / f"{name}-{version}"
    src.mkdir(parents=True, exist_ok=True)
    (src / "go.mod").write_text(f"module infleet.local/{name}\n\ngo 1.26\n")
    _run(["go", "get", f"{module}@{version}"], src, f"resolving {name}")
    _go_build([package], dest, src, ldflags, f"{name} {version}")
    return src


def build_kwok() -> None:
    bins = binaries()
    if bins.kwok.exists() and all(p.exists() for p in (*bins.kwok_stages, *bins.kwok_crds)):
        return
    ldflags = f"-s -w -X sigs.k8s.io/kwok/pkg/consts.Version={KWOK_VERSION}"
    src = _build_go_tool(
        "kwok", "sigs.k8s.io/kwok", KWOK_VERSION, "sigs.k8s.io/kwok/cmd/kwok", bins.kwok.parent, ldflags
    )
    moddir = _run(["go", "list", "-mod=mod", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/kwok"], src, "locating kwok stages")
    stage_dir = bins.kwok_stages[0].parent
    stage_dir.mkdir(parents=True, exist_ok=True)
    for rel, dest in zip(KWOK_STAGES, bins.kwok_stages, strict=True):
        shutil.copyfile(Path(moddir.strip()) / "kustomize" / "stage" / rel, dest)
    bins.kwok_crds[0].parent.mkdir(parents=True, exist_ok=True)
    for name, dest in zip(KWOK_CRDS, bins.kwok_crds, strict=True):
        shutil.copyfile(Path(moddir.strip()) / "kustomize" / "crd" / "bases" / name, dest)


def build_helm() -> None:
    bins = binaries()
    if bins.helm.exists():
        return
    ldflags = (
        f"-s -w -X helm.sh/helm/v3/internal/version.version={HELM_VERSION} "
        "-X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    )
    _build_go_tool("helm", "helm.sh/helm/v3", HELM_VERSION, "helm.sh/helm/v3/cmd/helm", bins.helm.parent, ldflags)


def build_seaweedfs() -> None:
    """SeaweedFS, the fleet's S3-compatible object store (cluster/objectstore.py)."""
    bins = binaries()
    if bins.weed.exists():
        return
    module = "github.com/seaweedfs/seaweedfs"
    _build_go_tool("seaweedfs", module, SEAWEEDFS_VERSION, f"{module}/weed", bins.weed.parent, "-s -w")


def lws_wanted() -> bool:
    return os.environ.get(LWS_ENV, "").lower() in ("1", "true", "yes")


def build_lws() -> None:
    """The LeaderWorkerSet controller (cluster/lws.py runs it) and its CRD, from the same module."""
    bins = binaries()
    if bins.lws.exists() and bins.lws_crd.exists():
        return
    module = "sigs.k8s.io/lws"
    ldflags = f"-s -w -X {module}/pkg/version.GitVersion={LWS_VERSION}"
    src = _build_go_tool("lws", module, LWS_VERSION, f"{module}/cmd", bins.lws.parent, ldflags)
    built = bins.lws.parent / "cmd"
    built.rename(bins.lws)
    moddir = _run(["go", "list", "-mod=mod", "-m", "-f", "{{.Dir}}", module], src, "locating the LWS CRD")
    bins.lws_crd.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(moddir.strip()) / "config" / "crd" / "bases" / LWS_CRD, bins.lws_crd)


def vendor_lws_chart(dest: Path) -> None:
    """LWS's own Helm chart from the same module version, as the infleet chart's `lws` subchart (lws.enabled)."""
    src = CACHE / "src" / f"lws-{LWS_VERSION}"
    if not (src / "go.mod").exists():
        src.mkdir(parents=True, exist_ok=True)
        (src / "go.mod").write_text("module infleet.local/lws\n\ngo 1.26\n")
        _run(["go", "get", f"sigs.k8s.io/lws@{LWS_VERSION}"], src, "resolving lws")
    moddir = Path(
        _run(["go", "list", "-mod=mod", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/lws"], src, "locating lws").strip()
    )
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(moddir / "charts" / "lws", dest)
    shutil.copyfile(moddir / "LICENSE", dest / "LICENSE")
    for path in [dest, *dest.rglob("*")]:  # the module cache is read-only
        path.chmod(0o755 if path.is_dir() else 0o644)


def ensure_prometheus() -> Path:
    """Debian's prometheus package (it brings promtool)."""
    found = shutil.which("prometheus")
    if found:
        return Path(found)
    _log("installing Debian's prometheus package")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"], check=True, env=env)
    # The package starts a system service on :9090; the fleet runs its own Prometheus instead.
    subprocess.run(["sh", "-c", "service prometheus stop >/dev/null 2>&1; pkill -x prometheus; true"])
    found = shutil.which("prometheus")
    if not found:
        raise SystemExit("infleet: prometheus is still missing after apt-get install prometheus")
    return Path(found)


def ensure_all() -> Binaries:
    started = time.monotonic()
    build_kubernetes()
    build_kwok()
    build_helm()
    build_seaweedfs()
    if lws_wanted():
        build_lws()
    ensure_prometheus()
    elapsed = time.monotonic() - started
    if elapsed > 5:
        _log(f"all binaries ready in {elapsed:.0f}s, cached under {CACHE / 'bin'}")
    return binaries()


if __name__ == "__main__":
    if sys.argv[1:2] == ["vendor-lws-chart"]:
        vendor_lws_chart(Path(sys.argv[2]))
    else:
        ensure_all()
