"""s3:// error mapping, at the unit level: no S3 server runs in this suite yet, so these check how botocore's own
error shapes map to reasons, not a download against a store."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from infleet.runtime.fetch.errors import FetchError, Reason
from infleet.runtime.fetch.stores import s3_reason, verify_s3

# boto3 is the `stores` extra (pyproject.toml says why it is not a main dependency)
ClientError = pytest.importorskip("botocore.exceptions", reason="the `stores` extra is not installed").ClientError


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("NoSuchKey", Reason.NotFound),
        ("NoSuchBucket", Reason.NotFound),
        ("InvalidAccessKeyId", Reason.Unauthorized),
        ("SignatureDoesNotMatch", Reason.Unauthorized),
        ("AccessDenied", Reason.Unauthorized),
        ("SlowDown", Reason.StoreUnreachable),
    ],
)
def test_client_error_codes(code: str, reason: Reason) -> None:
    err = ClientError({"Error": {"Code": code, "Message": "m"}}, "GetObject")
    assert s3_reason(err) is reason


def test_single_part_etag_md5_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "w"
    path.write_bytes(b"weights")
    verify_s3(path, 7, '"' + hashlib.md5(b"weights", usedforsecurity=False).hexdigest() + '"')
    with pytest.raises(FetchError) as bad:
        verify_s3(path, 7, '"' + "0" * 32 + '"')
    assert bad.value.reason is Reason.ChecksumMismatch
    verify_s3(path, 7, '"' + "0" * 32 + '-3"')  # a multipart ETag is not an md5 of the body: size only
    with pytest.raises(FetchError):
        verify_s3(path, 8, '"x-3"')
