"""One file API over local paths and ``s3://bucket/prefix`` URLs.

Every part of wsdhq reads and writes through these functions so the same code runs on a laptop and
against any S3-compatible server. S3 goes through boto3 only: credentials come from boto3's standard
chain (env, config files, instance role) and are never read, printed or logged here; the endpoint
comes from ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``, which boto3 reads itself. Retries with
exponential backoff on throttling, 5xx and connection errors are botocore's ``standard`` retry mode,
cut off once a call has been failing for ``S3_RETRY_BUDGET_S`` seconds (``WSDHQ_S3_RETRY_S``): an
endpoint that went away is then named as an outage (``StorageUnavailable``: endpoint + error), not
retried for minutes nor mistaken for bad data.

Importing this module registers an ``s3`` opener in ``webdataset.gopen.gopen_schemes`` so that
webdataset pipelines stream ``s3://`` shards through the same client.
"""
from __future__ import annotations

import io
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from webdataset.gopen import gopen_schemes

S3_MAX_ATTEMPTS = 8
S3_RETRY_BUDGET_S = float(os.environ.get("WSDHQ_S3_RETRY_S", "30"))
MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNK = 16 * 1024 * 1024
READ_BUFFER = 1024 * 1024

_client_lock = threading.Lock()
_clients: dict[int, object] = {}


class StorageError(OSError):
    """A storage operation failed; the message names the URL and the cause, never credentials."""


class StorageUnavailable(StorageError):
    """The S3 endpoint did not answer (connection refused, timeouts) within the retry budget."""


def is_s3(url: str | os.PathLike) -> bool:
    return str(url).startswith("s3://")


def split_s3(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    rest = str(url)[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"{url}: not an s3://bucket/key URL")
    return bucket, key


def join(url: str | os.PathLike, *parts: str) -> str:
    """Join path parts onto a local path or an S3 URL (always with ``/`` for S3)."""
    url = str(url)
    if is_s3(url):
        out = url.rstrip("/")
        for p in parts:
            out = out + "/" + str(p).strip("/")
        return out
    return str(Path(url, *parts))


def parent(url: str) -> str:
    url = str(url)
    if is_s3(url):
        return url.rstrip("/").rsplit("/", 1)[0]
    return str(Path(url).parent)


def s3_client():
    """One boto3 S3 client per process (clients are thread-safe; sessions are not shared across forks).

    Built lazily so importing this module never touches the network or the credential chain.
    """
    pid = os.getpid()
    client = _clients.get(pid)
    if client is None:
        with _client_lock:
            client = _clients.get(pid)
            if client is None:
                import boto3
                from botocore.config import Config

                cfg = Config(retries={"mode": "standard", "max_attempts": S3_MAX_ATTEMPTS},
                             connect_timeout=10, read_timeout=60)
                client = boto3.session.Session().client("s3", config=cfg)
                client.meta.events.register_first("needs-retry.s3", _retry_budget)
                _clients[pid] = client
    return client


def _retry_budget(attempts, request_dict, **_):
    """``needs-retry`` hook run before botocore's own: ``False`` (no more retries) once this call has
    been failing for ``S3_RETRY_BUDGET_S``; ``None`` lets the standard retry handler decide."""
    ctx = request_dict.setdefault("context", {})
    t0 = ctx.setdefault("wsdhq_first_failure", time.monotonic())
    return False if time.monotonic() - t0 >= S3_RETRY_BUDGET_S else None


def endpoint() -> str:
    """The S3 endpoint this process talks to (for error messages; no credentials in it)."""
    return str(s3_client().meta.endpoint_url)


def _s3_error(url: str, exn: Exception) -> OSError:
    """Turn a botocore error into one line naming the URL (botocore messages carry no secrets);
    connection-level failures become ``StorageUnavailable`` naming the endpoint."""
    from botocore.exceptions import ConnectionError as BotoConnectionError, HTTPClientError

    if isinstance(exn, (BotoConnectionError, HTTPClientError)):
        return StorageUnavailable(f"{url}: S3 endpoint {endpoint()} unavailable ({type(exn).__name__}: {exn}); "
                                  f"gave up after retrying for up to {S3_RETRY_BUDGET_S:.0f} s")
    code = (getattr(exn, "response", None) or {}).get("Error", {}).get("Code")
    if code in ("NoSuchKey", "404", "NotFound"):
        return FileNotFoundError(f"{url}: no such object")
    if code == "NoSuchBucket":
        return FileNotFoundError(f"{url}: no such bucket")
    return StorageError(f"{url}: S3 error: {type(exn).__name__}: {exn}")


def read_error(url: str, exn: Exception) -> OSError:
    """The error a shard stream raised (webdataset appends its context to ``args``), as one line
    naming the URL; a dropped connection mid-read is ``StorageUnavailable`` like a refused one."""
    from botocore.exceptions import BotoCoreError

    if isinstance(exn, BotoCoreError):
        return _s3_error(url, exn)
    msg = str(exn.args[0]).split(" @ ")[0] if exn.args else type(exn).__name__
    if isinstance(exn, OSError):
        return (type(exn) if type(exn) in (FileNotFoundError, StorageError, StorageUnavailable)
                else StorageError)(msg if url in msg else f"{url}: {msg}")
    return StorageError(f"{url}: {type(exn).__name__}: {msg}")


def open_read(url: str | os.PathLike) -> BinaryIO:
    """A binary stream of the object; S3 objects are streamed, not downloaded first."""
    url = str(url)
    if not is_s3(url):
        try:
            return open(url, "rb")
        except FileNotFoundError:
            raise FileNotFoundError(f"{url}: no such file") from None
    bucket, key = split_s3(url)
    try:
        body = s3_client().get_object(Bucket=bucket, Key=key)["Body"]
    except Exception as exn:  # botocore raises ClientError / EndpointConnectionError
        raise _s3_error(url, exn) from None
    # tarfile reads 10 KiB at a time; a 1 MiB buffer turns that into few large socket reads.
    return io.BufferedReader(body, buffer_size=READ_BUFFER)


def read_range(url: str | os.PathLike, start: int, length: int) -> bytes:
    """``length`` bytes from ``start`` (fewer at the end): one ranged GET on S3, a seek locally."""
    url = str(url)
    if length <= 0:
        return b""
    if not is_s3(url):
        with open_read(url) as f:
            f.seek(start)
            return f.read(length)
    bucket, key = split_s3(url)
    try:
        body = s3_client().get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{start + length - 1}")["Body"]
        return body.read()
    except Exception as exn:
        raise _s3_error(url, exn) from None


class _RangedObject(io.RawIOBase):
    """A seekable read-only view of an S3 object: each read is a ranged GET (parquet footers, npy headers)."""

    def __init__(self, url: str):
        self.url, self.pos, self.length = url, 0, size(url)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.length}[whence] + offset
        return self.pos

    def readinto(self, b) -> int:
        data = read_range(self.url, self.pos, min(len(b), self.length - self.pos))
        b[:len(data)] = data
        self.pos += len(data)
        return len(data)


def open_seekable(url: str | os.PathLike) -> BinaryIO:
    """A seekable binary stream: the local file, or ranged GETs on S3 (read only the parts you seek to)."""
    url = str(url)
    if not is_s3(url):
        return open_read(url)
    return io.BufferedReader(_RangedObject(url), buffer_size=64 * 1024)


def read_bytes(url: str | os.PathLike) -> bytes:
    with open_read(url) as f:
        return f.read()


def write_bytes(url: str | os.PathLike, data: bytes) -> None:
    """Write atomically: a local temp file renamed into place, or one S3 put (atomic by nature)."""
    url = str(url)
    if is_s3(url):
        bucket, key = split_s3(url)
        try:
            s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        except Exception as exn:
            raise _s3_error(url, exn) from None
        return
    write_file(url, lambda f: f.write(data))


def write_file(url: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Write atomically what ``write(f)`` writes into a binary file: a local temp file renamed into place,
    or, for S3, a local temp file uploaded once finished (multipart when large, so no large bytes in memory)."""
    url = str(url)
    if is_s3(url):
        with tempfile.TemporaryDirectory(prefix="wsdhq-") as d:
            tmp = Path(d, "object")
            with open(tmp, "wb") as f:
                write(f)
            upload_file(tmp, url)
        return
    path = Path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def upload_file(local_path: str | os.PathLike, url: str | os.PathLike) -> None:
    """Copy a finished local file to ``url``; large S3 objects go up as a multipart upload."""
    url = str(url)
    if not is_s3(url):
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(url).with_name(f".{Path(url).name}.tmp")
        shutil.copyfile(local_path, tmp)
        os.replace(tmp, url)
        return
    from boto3.s3.transfer import TransferConfig

    bucket, key = split_s3(url)
    cfg = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_CHUNK)
    try:
        s3_client().upload_file(str(local_path), bucket, key, Config=cfg)
    except Exception as exn:
        raise _s3_error(url, exn) from None


def download_file(url: str | os.PathLike, local_path: str | os.PathLike) -> None:
    url = str(url)
    Path(local_path).parent.mkdir(parents=True, exist_ok=True)
    if not is_s3(url):
        try:
            shutil.copyfile(url, local_path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{url}: no such file") from None
        return
    bucket, key = split_s3(url)
    try:
        s3_client().download_file(bucket, key, str(local_path))
    except Exception as exn:
        raise _s3_error(url, exn) from None


def exists(url: str | os.PathLike) -> bool:
    url = str(url)
    if not is_s3(url):
        return Path(url).exists()
    bucket, key = split_s3(url)
    try:
        s3_client().head_object(Bucket=bucket, Key=key)
        return True
    except Exception as exn:
        err = _s3_error(url, exn)
        if isinstance(err, FileNotFoundError):
            return False
        raise err from None


def size(url: str | os.PathLike) -> int:
    """Byte size of a file or object (the cheap integrity check the reader does on every shard)."""
    url = str(url)
    if not is_s3(url):
        try:
            return Path(url).stat().st_size
        except FileNotFoundError:
            raise FileNotFoundError(f"{url}: no such file") from None
    bucket, key = split_s3(url)
    try:
        return int(s3_client().head_object(Bucket=bucket, Key=key)["ContentLength"])
    except Exception as exn:
        raise _s3_error(url, exn) from None


def list_files(url_prefix: str | os.PathLike) -> list[str]:
    """All files under a directory / S3 prefix, as full URLs, sorted."""
    url_prefix = str(url_prefix)
    if not is_s3(url_prefix):
        root = Path(url_prefix)
        if not root.exists():
            return []
        return sorted(str(p) for p in root.rglob("*") if p.is_file())
    bucket, key = split_s3(url_prefix)
    prefix = key.rstrip("/") + "/" if key else ""
    out = []
    try:
        for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out.extend(f"s3://{bucket}/{o['Key']}" for o in page.get("Contents", []))
    except Exception as exn:
        raise _s3_error(url_prefix, exn) from None
    return sorted(out)


def remove(url: str | os.PathLike) -> None:
    url = str(url)
    if not is_s3(url):
        p = Path(url)
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
        return
    bucket, key = split_s3(url)
    try:
        s3_client().delete_object(Bucket=bucket, Key=key)
    except Exception as exn:
        raise _s3_error(url, exn) from None


def iter_chunks(url: str, chunk: int = 1 << 20) -> Iterator[bytes]:
    with open_read(url) as f:
        while True:
            b = f.read(chunk)
            if not b:
                return
            yield b


def gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192):
    """webdataset opener for ``s3://``: a streaming boto3 body (read-only)."""
    if "r" not in mode:
        raise StorageError(f"{url}: the s3 opener only reads; write shards locally and upload_file()")
    return open_read(url)


gopen_schemes["s3"] = gopen_s3
