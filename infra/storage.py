"""One artifact root URI for everything the pipeline writes: a local folder or `s3://bucket/prefix`.

Every function takes a URI. A URI without a scheme (or `file://`) is a local path; `s3://` goes
through boto3, which honours `AWS_ENDPOINT_URL_S3` (moto in tests, any S3-compatible store in
production). Writes of single objects are atomic on both backends: locally through a temporary
name and `os.replace`, on S3 because a PUT is atomic.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlparse


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def join(root: str, *parts: str) -> str:
    """Join path parts onto a URI with '/' (S3) or the OS separator (local)."""
    clean = [p.strip("/") for p in parts if p]
    if is_s3(root):
        return "/".join([root.rstrip("/"), *clean])
    return str(Path(local_path(root)).joinpath(*clean))


def local_path(uri: str) -> str:
    """The filesystem path of a local URI (strips `file://`)."""
    return uri[len("file://"):] if uri.startswith("file://") else uri


def _split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if not parsed.netloc:
        raise ValueError(f"S3 URI has no bucket: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def s3_client():
    """The boto3 S3 client of this process and S3 settings: one per (process, endpoint, key id),
    so a forked worker never shares its parent's connections and a changed environment (another
    endpoint or key) never reuses a client made for the old one."""
    env = os.environ
    return _client(os.getpid(), env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"),
                   env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY"))


@functools.lru_cache(maxsize=8)
def _client(pid: int, endpoint: str | None, key_id: str | None, secret: str | None):
    import boto3

    # A session of its own: boto3's default session keeps settings read when it was first used.
    return boto3.session.Session().client("s3", endpoint_url=endpoint)


s3_client.cache_clear = _client.cache_clear  # tests reset it around their S3 servers


def write_bytes(uri: str, data: bytes) -> None:
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        return
    path = Path(local_path(uri))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _missing(error) -> bool:
    return error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound", "NoSuchBucket")


def read_bytes(uri: str) -> bytes:
    if is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key = _split_s3(uri)
        try:
            return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as e:
            if _missing(e):
                raise FileNotFoundError(f"{uri} ({e.response['Error'].get('Code')})") from e
            raise
    return Path(local_path(uri)).read_bytes()


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def exists(uri: str) -> bool:
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        from botocore.exceptions import ClientError

        try:
            s3_client().head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                s3_client().head_bucket(Bucket=bucket)  # a missing bucket is an error, not "absent"
                return False
            raise
    return Path(local_path(uri)).exists()


def list_files(uri: str) -> list[str]:
    """All file URIs under a prefix (recursive), sorted."""
    if is_s3(uri):
        bucket, prefix = _split_s3(uri.rstrip("/") + "/")
        out = []
        for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out += [f"s3://{bucket}/{obj['Key']}" for obj in page.get("Contents", [])]
        return sorted(out)
    root = Path(local_path(uri))
    if not root.is_dir():
        return []
    return sorted(str(p) for p in root.rglob("*") if p.is_file())


def upload_file(src: str | Path, uri: str) -> None:
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        s3_client().upload_file(str(src), bucket, key)
        return
    dest = Path(local_path(uri))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def download_file(uri: str, dest: str | Path) -> Path:
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key = _split_s3(uri)
        try:
            s3_client().download_file(bucket, key, str(dest))
        except ClientError as e:
            if _missing(e):
                raise FileNotFoundError(f"{uri} ({e.response['Error'].get('Code')})") from e
            raise
    else:
        shutil.copyfile(local_path(uri), dest)
    return dest


def local_copy(uri: str, cache_dir: str | Path) -> Path:
    """A local path holding the object: the file itself when local, a download when on S3."""
    if not is_s3(uri):
        return Path(local_path(uri))
    bucket, key = _split_s3(uri)
    return download_file(uri, Path(cache_dir) / bucket / key)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_root_writable(root: str) -> None:
    """Fail early, naming the root, when the artifact root cannot be written."""
    probe = join(root, ".write-probe")
    try:
        write_bytes(probe, b"ok")
    except Exception as e:  # noqa: BLE001 - re-raised with the root named
        raise RuntimeError(f"artifact root {root!r} is not writable: {e}") from e
