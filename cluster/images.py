"""`make images`: the project's images built for real, with Debian's podman and buildah, on a base made here.

No registry is reachable from the machines this project is built on, so the base image is made locally:
`debootstrap` of Debian bookworm (python3, venv, certificates), imported with `podman import`. Each Dockerfile takes
that base as its build argument (`PYTHON_IMAGE`), so the same files still build with Docker on the public
`python:3.12-slim` default. An image is rebuilt only when its inputs change: the Dockerfile, the files it copies and
the base, hashed into the `infleet.inputs` label. Standard library only, like `build.py`.

    python3 cluster/images.py [operator gateway runtime-cpu runtime ...]   # default: operator gateway runtime-cpu
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("INFLEET_CACHE", Path.home() / ".cache" / "infleet"))
BASE = "localhost/infleet-base:bookworm"
MIRROR = os.environ.get("INFLEET_DEBIAN_MIRROR", "http://deb.debian.org/debian")
TOOLS = ("podman", "buildah", "runc", "debootstrap")  # each also the name of its Debian package
DEFAULT_IMAGES = ("operator", "gateway", "runtime-cpu")
# Variants: the same Dockerfile with other build arguments, tagged `<version>-<suffix>`. The runtime's CPU variant
# leaves out PyPI torch's ~3 GB of CUDA wheels; plain `runtime` is the CUDA image (`make images-cuda`).
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {"runtime-cpu": ("runtime", {"TORCH_VARIANT": "cpu"})}
# This machine's cgroups are hybrid v1: runc (not crun), cgroupfs, and no default ulimits podman cannot set here.
CONTAINERS_CONF = """[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
"""


def say(message: str) -> None:
    print(f"[infleet images] {message}", flush=True)


def version() -> str:
    match = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert match, "pyproject.toml has no version"
    return match.group(1)


def dockerfile(name: str) -> Path:
    return ROOT / "docker" / f"{VARIANTS.get(name, (name, {}))[0]}.Dockerfile"


def build_args(name: str) -> dict[str, str]:
    return VARIANTS.get(name, (name, {}))[1]


def tag(name: str) -> str:
    if name in VARIANTS:
        stem, _ = VARIANTS[name]
        return f"localhost/infleet/{stem}:{version()}-{name.removeprefix(stem + '-')}"
    return f"localhost/infleet/{name}:{version()}"


def environment() -> dict[str, str]:
    """podman's settings for this machine, in a containers.conf of our own."""
    conf = CACHE / "containers" / "containers.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    if not conf.exists() or conf.read_text() != CONTAINERS_CONF:
        conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def ensure_tools() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists()]
    if missing:
        say(f"installing {' '.join(missing)} (apt-get)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env, stdout=subprocess.DEVNULL)


def podman(*args: str, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], check=check, text=True, env=environment(), **kw)  # type: ignore[call-overload]


def exists(image: str) -> bool:
    """Whether podman holds `image`; without podman installed (`make test` needs none) nothing does."""
    if shutil.which("podman") is None:
        return False
    return podman("image", "exists", image, check=False).returncode == 0


def label(image: str, key: str) -> str:
    proc = podman("image", "inspect", "--format", f'{{{{index .Labels "{key}"}}}}', image, capture_output=True)
    return str(proc.stdout).strip()


def base() -> None:
    """Debian bookworm with python3: debootstrap into a temporary root, then `podman import`."""
    if exists(BASE):
        return
    started = time.monotonic()
    say(f"making the base image {BASE} with debootstrap (about a minute)")
    with tempfile.TemporaryDirectory(prefix="infleet-rootfs-") as rootfs:
        include = "python3,python3-venv,ca-certificates"
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={include}", "bookworm", rootfs, MIRROR],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        podman("import", "--change", 'CMD ["python3"]', "-", BASE, stdin=tar.stdout, stdout=subprocess.DEVNULL)
        tar.wait()
    say(f"base image ready in {time.monotonic() - started:.0f}s")


def copied(dockerfile: Path) -> list[Path]:
    """Build-context paths a Dockerfile copies (not multi-stage `--from` copies)."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    out: list[Path] = []
    for line in text.splitlines():
        words = line.split()
        if words and words[0].upper() == "COPY" and not words[1].startswith("--"):
            out += [ROOT / w for w in words[1:-1]]
    return out


def inputs_hash(name: str) -> str:
    """The Dockerfile, its build arguments, every file it copies, and the base image's id."""
    digest = hashlib.sha256(dockerfile(name).read_bytes())
    digest.update(repr(sorted(build_args(name).items())).encode())
    for path in copied(dockerfile(name)):
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            if "__pycache__" not in f.parts:
                digest.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes())
    digest.update(podman("image", "inspect", "--format", "{{.Id}}", BASE, capture_output=True).stdout.encode())
    return digest.hexdigest()[:16]


def host_config_mounts() -> list[str]:
    """This machine's CA bundle and pip configuration, read-only in every build step: an index or proxy the machine
    trusts (a private mirror, a TLS-inspecting proxy) is then trusted inside the build too."""
    paths = ["/etc/ssl/certs/ca-certificates.crt", "/etc/pip.conf"]
    return [f"--volume={p}:{p}:ro" for p in paths if Path(p).is_file()]


def build(name: str) -> str:
    image, inputs = tag(name), inputs_hash(name)
    if exists(image) and label(image, "infleet.inputs") == inputs:
        say(f"{image} is up to date")
        return image
    started = time.monotonic()
    say(f"building {image}")
    podman(
        "build",
        "--network=host",
        "--format=docker",
        *host_config_mounts(),
        *(
            a
            for key, value in {"PYTHON_IMAGE": BASE, **build_args(name)}.items()
            for a in ("--build-arg", f"{key}={value}")
        ),
        "--label",
        f"infleet.inputs={inputs}",
        "-f",
        str(dockerfile(name)),
        "-t",
        image,
        str(ROOT),
    )
    size = podman("image", "inspect", "--format", "{{.Size}}", image, capture_output=True).stdout.strip()
    say(f"{image} built in {time.monotonic() - started:.0f}s ({int(size) / 1e6:.0f} MB)")
    return image


def main(argv: list[str] | None = None) -> int:
    names = (sys.argv[1:] if argv is None else argv) or list(DEFAULT_IMAGES)
    unknown = [n for n in names if not dockerfile(n).exists()]
    if unknown:
        print(f"infleet images: no docker/<name>.Dockerfile (or variant) for {', '.join(unknown)}", file=sys.stderr)
        return 2
    ensure_tools()
    started = time.monotonic()
    base()
    for name in names:
        build(name)
    say(f"all images ready in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
