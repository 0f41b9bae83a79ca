"""Checkpoint replication to S3: our mirror's upload (files in parallel, large ones in parts) against a plain
`s3fs.put(..., recursive=True)` of the same files, in the same process, alternating, to a local S3 endpoint
(moto in server mode on 127.0.0.1). Also prints the read-back verification time, which the mirror adds.

    python benchmarks/mirror_upload.py [--rounds 3] [--files 8] [--mib 16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_checkpoint(root: Path, files: int, mib: int) -> Path:
    from megatron_llm.training.checkpoint.format import describe_files, iter_dir, write_metadata

    directory = iter_dir(root, 10)
    directory.mkdir(parents=True)
    for rank in range(files):
        (directory / f"__{rank}_0.distcp").write_bytes(os.urandom(mib << 20))
    (directory / "common.pt").write_bytes(os.urandom(4096))
    names = sorted(p.name for p in directory.iterdir())
    write_metadata(directory, {"step": 10, "files": describe_files(directory, names)})
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--mib", type=int, default=16)
    args = parser.parse_args()

    from tests.local_servers import S3_ENV, s3_endpoint

    with tempfile.TemporaryDirectory() as tmp, s3_endpoint(Path(tmp)) as url:
        os.environ.update(S3_ENV)
        os.environ["AWS_ENDPOINT_URL"] = url
        import boto3
        import s3fs

        from megatron_llm.training.checkpoint.remote_store import Store

        boto3.client("s3").create_bucket(Bucket="bench")
        directory = make_checkpoint(Path(tmp) / "ckpt", args.files, args.mib)
        size = sum(p.stat().st_size for p in directory.iterdir())
        store = Store("s3://bench/ours")
        plain_fs = s3fs.S3FileSystem()
        ours, plain, verify = [], [], []
        for i in range(args.rounds):
            begin = time.perf_counter()
            store.upload(directory)
            ours.append(time.perf_counter() - begin)
            begin = time.perf_counter()
            assert store.problems(10, deep=True) == []
            verify.append(time.perf_counter() - begin)
            begin = time.perf_counter()
            plain_fs.put(str(directory), f"bench/plain{i}", recursive=True)
            plain.append(time.perf_counter() - begin)
        mb = size / 1e6
        o, p, v = statistics.median(ours), statistics.median(plain), statistics.median(verify)
        print(f"checkpoint: {args.files + 2} files, {mb:.1f} MB; median of {args.rounds} rounds, alternating")
        print(f"mirror upload:         {o:7.2f} s  {mb / o:8.1f} MB/s")
        print(f"plain s3fs put:        {p:7.2f} s  {mb / p:8.1f} MB/s")
        print(f"mirror read-back hash: {v:7.2f} s  {mb / v:8.1f} MB/s (verification, not in the upload time)")
        print(f"ratio upload ours/plain time: {o / p:.3f}")


if __name__ == "__main__":
    main()
