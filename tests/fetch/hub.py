"""A local HTTP server laid out as the Hugging Face Hub serves a repository, for huggingface_hub pointed at it with
HF_ENDPOINT: model info, the recursive tree listing, and `/{repo}/resolve/{revision}/{file}` with the headers
huggingface_hub reads (X-Repo-Commit, ETag, X-Linked-Etag, X-Linked-Size; LFS files redirect to a blob URL)."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


def git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@dataclass
class Repo:
    # revision name or commit -> commit; commit -> {path: bytes}
    refs: dict[str, str]
    commits: dict[str, dict[str, bytes]]
    lfs: set[str] = field(default_factory=lambda: {"model.safetensors"})
    gated: bool = False
    corrupt: set[str] = field(default_factory=set)  # LFS files whose served body differs from their sha256

    def commit(self, revision: str) -> str | None:
        return revision if revision in self.commits else self.refs.get(revision)


class Hub:
    def __init__(self, repos: dict[str, Repo]) -> None:
        self.repos = repos
        self.requests: Counter[str] = Counter()  # "METHOD path" -> count
        self.lock = threading.Lock()
        # the hub, and a second origin for LFS blobs as the hub's CDN is (huggingface_hub reads the HEAD metadata
        # from the redirect itself when it leaves the hub's origin)
        self.servers = [ThreadingHTTPServer(("127.0.0.1", 0), self.handler()) for _ in range(2)]
        self.url, self.cdn = (f"http://127.0.0.1:{s.server_address[1]}" for s in self.servers)

    def __enter__(self) -> Hub:
        for server in self.servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()

    def blob(self, sha: str) -> bytes | None:
        for repo in self.repos.values():
            for files in repo.commits.values():
                for name, data in files.items():
                    if hashlib.sha256(data).hexdigest() == sha:
                        return bytes(b ^ 0xFF for b in data) if name in repo.corrupt else data
        return None

    def find(self, path: str) -> tuple[str, Repo, str] | None:
        for name, repo in self.repos.items():
            if path == name or path.startswith(name + "/"):
                return name, repo, path[len(name) + 1 :]
        return None

    def handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def send(self, status: int, body: bytes, headers: dict[str, str], head: bool = False) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def do_HEAD(self) -> None:
                self.route(head=True)

            def do_GET(self) -> None:
                self.route(head=False)

            def route(self, head: bool) -> None:
                path = unquote(urlparse(self.path).path).lstrip("/")
                with hub.lock:
                    hub.requests[f"{self.command} /{path}"] += 1
                if path.startswith("lfs/"):
                    data = hub.blob(path.removeprefix("lfs/"))
                    if data is None:
                        return self.send(404, b"", {}, head)
                    return self.send(200, data, {"ETag": f'"{hashlib.sha256(data).hexdigest()}"'}, head)
                api = path.startswith("api/models/")
                found = hub.find(path.removeprefix("api/models/") if api else path)
                if found is None:
                    return self.send(404, b'{"error":"Repository not found"}', {"X-Error-Code": "RepoNotFound"}, head)
                name, repo, rest = found
                if repo.gated and not self.headers.get("Authorization"):
                    msg = b'{"error":"Access to this model is restricted. You must be authenticated."}'
                    return self.send(401, msg, {"X-Error-Code": "GatedRepo", "X-Error-Message": "gated"}, head)
                if api:
                    return self.api(name, repo, rest, head)
                kind, _, rest = rest.partition("/")
                revision, _, filename = rest.partition("/")
                commit = repo.commit(revision)
                if kind != "resolve" or commit is None:
                    return self.send(404, b"", {"X-Error-Code": "RevisionNotFound"}, head)
                files = repo.commits[commit]
                if filename not in files:
                    return self.send(404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}, head)
                data = files[filename]
                headers = {"X-Repo-Commit": commit, "ETag": f'"{git_blob_sha(data)}"'}
                if filename in repo.lfs:
                    sha = hashlib.sha256(data).hexdigest()
                    headers |= {
                        "X-Linked-Etag": f'"{sha}"',
                        "X-Linked-Size": str(len(data)),
                        "Location": f"{hub.cdn}/lfs/{sha}",
                    }
                    return self.send(302, b"", headers, head)
                return self.send(200, data, headers, head)

            def api(self, name: str, repo: Repo, rest: str, head: bool) -> None:
                kind, _, revision = rest.partition("/")
                if kind == "" or revision == "":  # /api/models/{repo}: the default branch
                    revision = "main"
                commit = repo.commit(revision)
                if commit is None or kind not in ("", "revision", "tree"):
                    return self.send(404, b'{"error":"Invalid rev id"}', {"X-Error-Code": "RevisionNotFound"}, head)
                files = repo.commits[commit]

                def lfs(fname: str) -> dict[str, object] | None:
                    if fname not in repo.lfs:
                        return None
                    data = files[fname]
                    return {
                        "sha256": hashlib.sha256(data).hexdigest(),
                        "oid": hashlib.sha256(data).hexdigest(),
                        "size": len(data),
                        "pointerSize": 134,
                    }

                if kind == "tree":
                    body: object = [
                        {"type": "file", "path": f, "size": len(d), "oid": git_blob_sha(d), "lfs": lfs(f)}
                        for f, d in files.items()
                    ]
                else:
                    body = {
                        "id": name,
                        "modelId": name,
                        "sha": commit,
                        "private": False,
                        "siblings": [
                            {"rfilename": f, "size": len(d), "blobId": git_blob_sha(d), "lfs": lfs(f)}
                            for f, d in files.items()
                        ],
                    }
                return self.send(200, json.dumps(body).encode(), {"Content-Type": "application/json"}, head)

        return Handler
