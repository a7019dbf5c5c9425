"""Reader throughput vs a plain sequential loop over the same shard files, local and S3, one run.

    .venv/bin/python -m benchmarks.bench_shards [--max-count 250] [--image-size 224]

Data: the 1000 real MIRFLICKR thumbnails of ../shared/data/mirflickr25k_real converted to shards
(the sklearn digits demo when that folder is absent). Every path runs in one process (no DataLoader
workers) so the figures compare per-core work:

* no decode: ``iter_samples`` over every shard (webdataset tar iterators + json decode, what tag
  counting and encoding tasks use) vs ``tarfile`` reading every member;
* with decode: ``make_loader(train=False, num_workers=0)`` (PIL decode, resize + center crop,
  normalise, batch) vs ``tarfile`` + ``PIL.Image.open().convert("RGB")`` + the same transform;
* S3 (moto server on 127.0.0.1): ``iter_samples`` over ``s3://`` shards vs ``get_object`` +
  ``tarfile``. Moto serves from Python in the same process, so absolute S3 figures are moto's.

Every pair is the best of ``--repeats`` runs, plain and reader alternating, so both sides see the
same machine load and neither alone pays first-call warm-up.
"""
from __future__ import annotations

import argparse
import io
import shutil
import socket
import tarfile
import tempfile
import time
from pathlib import Path

from PIL import Image

from shards import storage
from shards.manifest import Manifest
from shards.reader import ReaderConfig, iter_samples, make_loader
from shards.transforms import eval_transform

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "mirflickr25k_real" / "subset1000_with_images.npz"


def _timed(fn) -> tuple[int, float]:
    t = time.perf_counter()
    n = fn()
    return n, time.perf_counter() - t


def _pair(plain, reader, repeats: int) -> tuple[tuple[int, float], tuple[int, float]]:
    """Best of ``repeats`` for each, alternating plain and reader so both see the same machine load."""
    runs = [(_timed(plain), _timed(reader)) for _ in range(repeats)]
    return min((r[0] for r in runs), key=lambda x: x[1]), min((r[1] for r in runs), key=lambda x: x[1])


def plain_tar(urls: list[str], decode: bool, size: int, opener=lambda u: open(u, "rb")) -> int:
    n = 0
    for url in urls:
        with opener(url) as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for member in tar:
                data = tar.extractfile(member).read()
                if member.name.endswith((".jpg", ".png")):
                    n += 1
                    if decode:
                        eval_transform(Image.open(io.BytesIO(data)).convert("RGB"), size)
    return n


def reader_samples(urls: list[str]) -> int:
    return sum(1 for url in urls for _ in iter_samples(url))


def reader_batches(set_url: str, size: int) -> int:
    cfg = ReaderConfig(batch_size=50, image_size=size, num_workers=0, check_sizes=False)
    return sum(len(b["key"]) for b in make_loader(set_url, cfg, train=False))


def row(name: str, n: int, secs: float, nbytes: int, base: tuple[int, float] | None = None) -> str:
    ratio = f"{(n / secs) / (base[0] / base[1]):6.2f}" if base else "     -"
    return f"{name:46s} {n / secs:9.1f} {nbytes / secs / 1e6:8.1f} {ratio}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-count", type=int, default=250)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3, help="best of N for the no-decode and S3 paths")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    from shards.writer import ShardingConfig

    sharding = ShardingConfig(max_count=args.max_count, query_fraction=0.01, train_fraction=0.99,
                              validate_images=False)
    if REAL.is_file():
        from shards.converters.mirflickr import convert_matrix

        convert_matrix(str(REAL), str(tmp / "data"), sharding)
        source = "MIRFLICKR 1000 real JPEG thumbnails"
    else:
        from shards.converters.demo import convert_demo

        convert_demo(str(tmp / "data"), sharding=sharding)
        source = "sklearn digits demo (8x8 PNG)"
    set_url = str(tmp / "data" / "database")
    m = Manifest.load(set_url)
    urls, nbytes = m.shard_urls(), sum(s.bytes for s in m.shards)
    plain_tar(urls, False, args.image_size)  # page cache warm for every path
    print(f"data: {source}; {m.total} samples in {len(urls)} shards, {nbytes / 1e6:.1f} MB; "
          f"image_size {args.image_size}; one process")
    print(f"{'path':46s} {'samples/s':>9s} {'MB/s':>8s} {'ratio':>6s}")
    base, reader = _pair(lambda: plain_tar(urls, False, args.image_size), lambda: reader_samples(urls), args.repeats)
    print(row("plain tarfile loop (no decode)", *base, nbytes))
    print(row("reader iter_samples (no decode)", *reader, nbytes, base))
    base, reader = _pair(lambda: plain_tar(urls, True, args.image_size),
                         lambda: reader_batches(set_url, args.image_size), args.repeats)
    print(row("plain tarfile + PIL decode + transform", *base, nbytes))
    print(row("reader make_loader (decode, eval transform)", *reader, nbytes, base))

    import logging
    import os

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
                       "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
    try:
        storage.s3_client().create_bucket(Bucket="bench")
        s3_urls = []
        for url in urls:
            s3_urls.append(f"s3://bench/{Path(url).name}")
            storage.upload_file(url, s3_urls[-1])
        base, reader = _pair(lambda: plain_tar(s3_urls, False, args.image_size, opener=_boto3_get),
                             lambda: reader_samples(s3_urls), args.repeats)
        print(row("S3: plain boto3 get_object + tarfile", *base, nbytes))
        print(row("S3: reader iter_samples (no decode)", *reader, nbytes, base))
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _boto3_get(url: str):
    bucket, key = storage.split_s3(url)
    return storage.s3_client().get_object(Bucket=bucket, Key=key)["Body"]


if __name__ == "__main__":
    main()
