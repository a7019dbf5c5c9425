"""Storage against a real S3-compatible HTTP server (moto server mode on 127.0.0.1) through boto3."""
from __future__ import annotations

import http.server
import threading
from collections import Counter

import boto3
import pytest
from webdataset.gopen import gopen

from shards import storage
from shards.converters.demo import convert_demo
from shards.manifest import Manifest, verify
from shards.reader import ReaderConfig, make_loader

pytestmark = pytest.mark.s3


def test_put_get_list_exists_remove_round_trip(s3_bucket):
    base = f"s3://{s3_bucket}/a"
    storage.write_bytes(storage.join(base, "x.bin"), b"hello")
    storage.write_bytes(storage.join(base, "sub", "y.bin"), b"world!")
    assert storage.read_bytes(f"{base}/x.bin") == b"hello" and storage.size(f"{base}/sub/y.bin") == 6
    assert storage.list_files(base) == [f"{base}/sub/y.bin", f"{base}/x.bin"]
    assert storage.exists(f"{base}/x.bin") and not storage.exists(f"{base}/nope.bin")
    storage.remove(f"{base}/x.bin")
    assert storage.list_files(base) == [f"{base}/sub/y.bin"]


def test_missing_object_is_file_not_found_naming_the_url_and_no_secret(s3_bucket):
    with pytest.raises(FileNotFoundError, match=rf"s3://{s3_bucket}/missing\.tar: no such object") as e:
        storage.read_bytes(f"s3://{s3_bucket}/missing.tar")
    assert "testing" not in str(e.value)  # the dummy secret key of the fixture is never echoed


def test_large_upload_goes_multipart(s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "MULTIPART_THRESHOLD", 5 * 1024 * 1024)
    monkeypatch.setattr(storage, "MULTIPART_CHUNK", 5 * 1024 * 1024)
    f = tmp_path / "big.tar"
    f.write_bytes(bytes(range(256)) * (11 * 1024 * 1024 // 256))
    storage.upload_file(str(f), f"s3://{s3_bucket}/big.tar")
    head = boto3.client("s3").head_object(Bucket=s3_bucket, Key="big.tar")
    assert head["ETag"].strip('"').endswith("-3")  # 3 parts: 5 + 5 + 1 MiB
    assert storage.read_bytes(f"s3://{s3_bucket}/big.tar") == f.read_bytes()


def test_webdataset_gopen_streams_s3_urls(s3_bucket):
    storage.write_bytes(f"s3://{s3_bucket}/k", b"abc")
    with gopen(f"s3://{s3_bucket}/k") as stream:
        assert stream.read() == b"abc"


def test_client_retries_throttling_and_5xx_with_backoff(monkeypatch):
    """A real HTTP server that answers 503 SlowDown twice, then the object: the read succeeds."""
    hits = Counter()

    class Flaky(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits["get"] += 1
            if hits["get"] <= 2:
                body = b"<Error><Code>SlowDown</Code><Message>slow down</Message></Error>"
                self.send_response(503)
            else:
                body = b"payload"
                self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.server_port}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.setattr(storage, "_clients", {})
        assert storage.read_bytes("s3://bucket/key") == b"payload"
        assert hits["get"] == 3
    finally:
        server.shutdown()
        storage._clients.clear()


def test_demo_written_to_s3_reads_back_once_per_sample_across_ranks_and_workers(s3_bucket):
    root = f"s3://{s3_bucket}/demo"
    convert_demo(root)
    m = Manifest.load(f"{root}/train")
    assert m.shard_urls()[0] == f"{root}/train/shard-000000.tar" and not verify(m)
    cfg = ReaderConfig(batch_size=100, image_size=8, num_workers=2)
    seen = Counter()
    for rank in range(2):
        loader = make_loader(f"{root}/train", cfg, rank=rank, world_size=2, train=False)
        for b in loader:
            seen.update(b["index"].tolist())
        assert not loader.skips
    assert len(seen) == m.total and set(seen.values()) == {1}
