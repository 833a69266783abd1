"""API keys: 401 without a valid key, scopes restrict namespaces, and the key never reaches a replica."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from infleet.gateway.app import Gateway
from infleet.gateway.auth import KeyStore, Unauthorized

from .conftest import ServerThread, Upstream, serve_gateway


def test_key_store_scopes() -> None:
    keys = KeyStore(enabled=True)
    keys.set_source("ns/a", {"sk-team-a": "team-a, shared", "sk-admin": "*"})
    keys.set_source("ns/b", {"sk-team-a": "team-b"})
    assert keys.authorize("Bearer sk-team-a") == frozenset({"team-a", "shared", "team-b"})  # union over sources
    assert keys.authorize("bearer sk-admin") is None  # every namespace
    for bad in (None, "", "Bearer ", "Basic c2s6", "sk-team-a", "Bearer sk-nope"):
        with pytest.raises(Unauthorized):
            keys.authorize(bad)
    keys.remove_source("ns/a")
    with pytest.raises(Unauthorized):
        keys.authorize("Bearer sk-admin")
    assert "sk-" not in repr(keys)
    assert KeyStore(enabled=False).authorize(None) is None


def test_key_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text("sk-one: [a, b]\nsk-two: '*'\n")
    keys = KeyStore(enabled=True)
    keys.load_file(path)
    assert keys.authorize("Bearer sk-one") == frozenset({"a", "b"})
    path.write_text("- not a mapping\n")
    with pytest.raises(ValueError, match="mapping"):
        keys.load_file(path)


def test_over_http(caplog: pytest.LogCaptureFixture) -> None:
    up = Upstream()
    keys = KeyStore(enabled=True)
    keys.set_source("s", {"sk-a": "team-a", "sk-all": "*"})
    gateway = Gateway(keys=keys)
    with ServerThread(up.app()) as replica, serve_gateway(gateway) as gw:
        for ns in ("team-a", "team-b"):
            gateway.catalog.set_deployment(ns, "m", f"model-{ns}")
            gateway.catalog.set_slice(ns, "m", "s", (replica.endpoint,))
        url = f"{gw.url}/v1/chat/completions"
        body = {"model": "model-team-a", "messages": [{"role": "user", "content": "hi"}]}

        missing = httpx.post(url, json=body)
        assert missing.status_code == 401
        assert missing.json()["error"]["type"] == "authentication_error"
        wrong = httpx.post(url, json=body, headers={"Authorization": "Bearer sk-wrong"})
        assert wrong.status_code == 401 and wrong.json()["error"]["message"] == "invalid API key"
        assert httpx.get(f"{gw.url}/v1/models").status_code == 401
        assert httpx.post(f"{gw.url}/v2/models/model-team-a/infer", content=b"{}").status_code == 401

        ok = httpx.post(url, json=body, headers={"Authorization": "Bearer sk-a"})
        assert ok.status_code == 200
        assert "authorization" not in up.seen[-1]["headers"]  # the gateway's key stays at the gateway

        # a key scoped to team-a neither sees nor reaches team-b
        listed = httpx.get(f"{gw.url}/v1/models", headers={"Authorization": "Bearer sk-a"}).json()
        assert [m["id"] for m in listed["data"]] == ["model-team-a"]
        hidden = httpx.post(url, json={**body, "model": "model-team-b"}, headers={"Authorization": "Bearer sk-a"})
        assert hidden.status_code == 404
        assert hidden.json()["error"]["message"].endswith("served models: 'model-team-a'")
        everything = httpx.get(f"{gw.url}/v1/models", headers={"Authorization": "Bearer sk-all"}).json()
        assert {m["id"] for m in everything["data"]} == {"model-team-a", "model-team-b"}
        assert httpx.get(f"{gw.url}/health").status_code == 200  # probes need no key
    assert "sk-a" not in caplog.text and "sk-wrong" not in caplog.text
