"""The local fleet's object store: SeaweedFS (a real distributed store: master, volume server, filer) behind its S3
gateway, so `s3://` models are fetched by the real boto3 client exactly as from any S3-compatible store.

The S3 gateway listens on every address: the fleet's tools reach it at 127.0.0.1, pods at the pod network's host
address (`endpoint_for_pods`, which the stack gives the chart as `models.s3Endpoint`). One identity, with keys made
once per fleet and kept in the fleet's directory; `seed` puts the SmolLM2 GGUF where `examples/smollm2-l4.yaml`
points, as one part so that its ETag is its md5 and the fetcher verifies it.
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from infleet.cluster.controlplane import Fleet

BUCKET = "models"
SMOLLM2_PREFIX = "smollm2-135m-instruct/"  # examples/smollm2-l4.yaml: s3://models/smollm2-135m-instruct/
SECRET_NAME = "model-store"  # the Secret examples name in spec.model.credentialsSecret


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str

    def env(self) -> dict[str, str]:
        """As a Secret's keys for the fetcher (and boto3's standard variables)."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}


def credentials(fleet_dir: Path) -> Credentials:
    path = fleet_dir / "objectstore" / "credentials.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = {"access_key": "INFLEET" + secrets.token_hex(6).upper(), "secret_key": secrets.token_urlsafe(30)}
        path.write_text(json.dumps(keys))
        path.chmod(0o600)
    return Credentials(**json.loads(path.read_text()))


def s3_config(creds: Credentials) -> dict[str, Any]:
    """SeaweedFS' S3 identities: one that may do everything; any other key is refused."""
    identity = {
        "name": "infleet",
        "credentials": [{"accessKey": creds.access_key, "secretKey": creds.secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    return {"identities": [identity]}


def write_config(fleet: Fleet) -> None:
    store = fleet.dir / "objectstore"
    (store / "data").mkdir(parents=True, exist_ok=True)
    (store / "s3.json").write_text(json.dumps(s3_config(credentials(fleet.dir))))


def argv(fleet: Fleet) -> list[str]:
    """`weed server` with every port from the fleet's base, so that fleets run side by side."""
    store = fleet.dir / "objectstore"
    config = store / "s3.json"
    p = fleet.ports
    return [
        str(fleet.bins.weed),
        "server",
        f"-dir={store / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=0.0.0.0",
        f"-master.port={p.weed_master}",
        f"-master.port.grpc={p.weed_master + 1}",
        "-master.volumeSizeLimitMB=512",
        f"-volume.port={p.weed_volume}",
        f"-volume.port.grpc={p.weed_volume + 1}",
        "-filer",
        f"-filer.port={p.weed_filer}",
        f"-filer.port.grpc={p.weed_filer + 1}",
        "-s3",
        f"-s3.port={p.s3}",
        f"-s3.port.grpc={p.s3 + 1}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config}",
    ]


def ready(fleet: Fleet) -> bool:
    """The S3 gateway answers, and refuses an unsigned request (so the identities are loaded)."""
    try:
        urllib.request.urlopen(f"{endpoint(fleet)}/{BUCKET}", timeout=2)
    except urllib.error.HTTPError as err:
        return err.code in (403, 404)
    except OSError:
        return False
    return False


def endpoint(fleet: Fleet) -> str:
    return f"http://127.0.0.1:{fleet.ports.s3}"


def endpoint_for_pods(fleet: Fleet) -> str:
    return f"http://{fleet.network.host_ip}:{fleet.ports.s3}"


def client(fleet: Fleet) -> Any:
    import boto3

    creds = credentials(fleet.dir)
    return boto3.client(
        "s3",
        endpoint_url=endpoint(fleet),
        aws_access_key_id=creds.access_key,
        aws_secret_access_key=creds.secret_key,
        region_name="us-east-1",
    )


def seed(fleet: Fleet, gguf: Path) -> str:
    """Put the GGUF under SMOLLM2_PREFIX unless it is there already; returns its s3:// URI prefix."""
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import ClientError

    s3 = client(fleet)
    try:
        s3.create_bucket(Bucket=BUCKET)
    except ClientError as err:
        if err.response["Error"]["Code"] not in ("BucketAlreadyExists", "BucketAlreadyOwnedByYou"):
            raise
    key = SMOLLM2_PREFIX + gguf.name
    try:
        if s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"] == gguf.stat().st_size:
            return f"s3://{BUCKET}/{SMOLLM2_PREFIX}"
    except ClientError:
        pass
    one_part = TransferConfig(multipart_threshold=1 << 40)  # a single-part ETag is the md5: fully verifiable
    s3.upload_file(str(gguf), BUCKET, key, Config=one_part)
    return f"s3://{BUCKET}/{SMOLLM2_PREFIX}"
