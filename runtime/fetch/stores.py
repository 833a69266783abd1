"""One download function per store, each through the store's own client, each mapping its errors to FetchError."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import httpx

from infleet.runtime.fetch.errors import FetchError, Reason

# what the runtime loads from a hub repository: weights, config, tokenizer, chat template, generation defaults
HF_PATTERNS = [
    "*.safetensors",
    "model.safetensors.index.json",
    "*.gguf",
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "*.jinja",
]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


Expect = Callable[[int], None]  # told the total bytes once the store has listed them (progress.py)


def _ignore(_: int) -> None:
    pass


def download(uri: str, revision: str | None, dest: Path, expect: Expect = _ignore) -> None:
    scheme = urlparse(uri).scheme
    if scheme == "hf":
        download_hf(uri, revision, dest, expect)
    elif scheme == "s3":
        download_s3(uri, dest, expect)
    elif scheme == "gs":
        download_gs(uri, dest, expect)
    elif scheme in ("https", "http"):  # plain http for in-cluster servers
        download_https(uri, dest, expect=expect)
    else:
        raise FetchError(Reason.NotFound, f"unsupported model URI scheme {scheme!r} in {uri}")


def http_reason(status: int) -> Reason:
    if status in (401, 403):
        return Reason.Unauthorized
    if status == 404:
        return Reason.NotFound
    return Reason.StoreUnreachable


def transport_errors() -> tuple[type[Exception], ...]:
    """Connection failures of the HTTP client huggingface_hub uses: httpx, or httpx2 in its newer releases."""
    errors: list[type[Exception]] = [httpx.TransportError]
    try:
        import httpx2

        errors.append(httpx2.TransportError)
    except ImportError:
        pass
    return tuple(errors)


def download_hf(uri: str, revision: str | None, dest: Path, expect: Expect = _ignore) -> None:
    """snapshot_download, then each LFS file checked against the sha256 and size the hub's model info publishes
    (an independent check: it does not rely on huggingface_hub verifying them itself)."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import filter_repo_objects

    repo = uri.removeprefix("hf://").strip("/")
    token = os.environ.get("HF_TOKEN") or None
    unreachable: tuple[type[Exception], ...] = (LocalEntryNotFoundError, *transport_errors())
    try:
        info = HfApi().model_info(repo, revision=revision, files_metadata=True, token=token)
        wanted = filter_repo_objects(info.siblings or [], allow_patterns=HF_PATTERNS, key=lambda f: f.rfilename)
        expect(sum(f.size or 0 for f in wanted))
        snapshot_download(repo, revision=info.sha, allow_patterns=HF_PATTERNS, local_dir=dest, token=token)
    except GatedRepoError as err:
        raise FetchError(Reason.Unauthorized, f"{repo} is gated or needs a token: {err}") from err
    except (RevisionNotFoundError, EntryNotFoundError) as err:
        raise FetchError(Reason.NotFound, f"{repo}@{revision}: {err}") from err
    except RepositoryNotFoundError as err:  # the hub answers 401 for a private repo without a token
        raise FetchError(Reason.Unauthorized if "401" in str(err) else Reason.NotFound, str(err)) from err
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else 0
        raise FetchError(http_reason(status), str(err)) from err
    except unreachable as err:
        raise FetchError(Reason.StoreUnreachable, f"{repo}: {type(err).__name__}: {err}") from err
    for sibling in info.siblings or []:
        path = dest / sibling.rfilename
        if not path.is_file():
            continue
        if sibling.size is not None and path.stat().st_size != sibling.size:
            raise FetchError(
                Reason.ChecksumMismatch, f"{sibling.rfilename}: {path.stat().st_size} bytes, hub says {sibling.size}"
            )
        if sibling.lfs is not None and sha256_of(path) != sibling.lfs.sha256:
            raise FetchError(Reason.ChecksumMismatch, f"{sibling.rfilename}: sha256 differs from the hub's LFS sha256")
    # huggingface_hub's own bookkeeping under local_dir is not part of the model
    cache_dir = dest / ".cache"
    if cache_dir.is_dir():
        import shutil

        shutil.rmtree(cache_dir)


def download_s3(uri: str, dest: Path, expect: Expect = _ignore) -> None:
    """boto3 with endpoint, region and keys from the standard AWS_* environment (AWS_ENDPOINT_URL included)."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

    parsed = urlparse(uri)
    bucket, prefix = parsed.netloc, parsed.path.lstrip("/")
    client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        objects = [obj for page in pages for obj in page.get("Contents", [])]
        if not objects:
            raise FetchError(Reason.NotFound, f"no object under {uri}")
        expect(sum(int(obj["Size"]) for obj in objects))
        for obj in objects:
            rel = obj["Key"][len(prefix) :].lstrip("/") or Path(obj["Key"]).name
            path = dest / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, obj["Key"], str(path))
            verify_s3(path, obj["Size"], obj["ETag"])
    except ClientError as err:
        raise FetchError(s3_reason(err), str(err)) from err
    except EndpointConnectionError as err:
        raise FetchError(Reason.StoreUnreachable, str(err)) from err
    except BotoCoreError as err:  # missing credentials and the like
        raise FetchError(
            Reason.Unauthorized if "credentials" in str(err).lower() else Reason.StoreUnreachable, str(err)
        ) from err


def s3_reason(err: Exception) -> Reason:
    code = str(getattr(err, "response", {}).get("Error", {}).get("Code", ""))
    if code in ("NoSuchKey", "NoSuchBucket", "404", "NotFound"):
        return Reason.NotFound
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "401"):
        return Reason.Unauthorized
    return Reason.StoreUnreachable


def verify_s3(path: Path, size: int, etag: str) -> None:
    """The size always; the md5 when the ETag is a single-part upload's (a multipart ETag ends in -N)."""
    if path.stat().st_size != size:
        raise FetchError(Reason.ChecksumMismatch, f"{path.name}: {path.stat().st_size} bytes, store says {size}")
    etag = etag.strip('"')
    if "-" not in etag:
        digest = hashlib.md5(usedforsecurity=False)
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != etag:
            raise FetchError(Reason.ChecksumMismatch, f"{path.name}: md5 differs from the store's ETag")


def download_gs(uri: str, dest: Path, expect: Expect = _ignore) -> None:
    """gcsfs: credentials from GOOGLE_SERVICE_ACCOUNT_JSON (a key from spec.model.credentialsSecret),
    GOOGLE_APPLICATION_CREDENTIALS or the pod's workload identity; sizes checked."""
    import json

    import gcsfs

    key = os.environ.get("GOOGLE_SERVICE_ACCOUNT_JSON")
    fs = gcsfs.GCSFileSystem(token=json.loads(key)) if key else gcsfs.GCSFileSystem()
    root = uri.removeprefix("gs://").rstrip("/")
    try:
        files = fs.find(root, detail=True)
        if not files:
            raise FetchError(Reason.NotFound, f"no object under {uri}")
        expect(sum(int(meta["size"]) for meta in files.values()))
        for name, meta in files.items():
            path = dest / (name[len(root) :].lstrip("/") or Path(name).name)
            path.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(name, str(path))
            if path.stat().st_size != int(meta["size"]):
                raise FetchError(Reason.ChecksumMismatch, f"{name}: size differs from the store's")
    except FileNotFoundError as err:
        raise FetchError(Reason.NotFound, str(err)) from err
    except PermissionError as err:
        raise FetchError(Reason.Unauthorized, str(err)) from err


def download_https(uri: str, dest: Path, attempts: int = 5, expect: Expect = _ignore) -> None:
    """One file, resumed with a Range request when the connection drops; checked against a `.sha256` sidecar
    when the server has one."""
    path = dest / Path(urlparse(uri).path).name
    expected = sidecar_sha256(uri)
    total: int | None = None
    for attempt in range(attempts):
        done = path.stat().st_size if path.exists() else 0
        headers = {"Range": f"bytes={done}-"} if done else {}
        try:
            with httpx.stream("GET", uri, headers=headers, follow_redirects=True, timeout=30) as resp:
                if resp.status_code >= 400:
                    raise FetchError(http_reason(resp.status_code), f"GET {uri}: HTTP {resp.status_code}")
                if resp.status_code != 206:  # the server ignored the Range: start over
                    done = 0
                length = resp.headers.get("content-length")
                total = done + int(length) if length is not None else None
                if total is not None:
                    expect(total)
                with path.open("ab" if done else "wb") as f:
                    for chunk in resp.iter_bytes():
                        f.write(chunk)
            if total is not None and path.stat().st_size != total:
                continue
            break
        except httpx.TransportError as err:
            if attempt == attempts - 1:
                raise FetchError(Reason.StoreUnreachable, f"GET {uri}: {err}") from err
    else:
        raise FetchError(Reason.StoreUnreachable, f"GET {uri}: incomplete after {attempts} attempts")
    if expected is not None and sha256_of(path) != expected:
        raise FetchError(Reason.ChecksumMismatch, f"{path.name}: sha256 differs from {uri}.sha256")


def sidecar_sha256(uri: str) -> str | None:
    try:
        resp = httpx.get(uri + ".sha256", follow_redirects=True, timeout=30)
    except httpx.TransportError as err:
        raise FetchError(Reason.StoreUnreachable, f"GET {uri}.sha256: {err}") from err
    if resp.status_code != 200:
        return None
    return resp.text.split()[0].lower()
