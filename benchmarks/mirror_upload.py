"""Checkpoint replication to S3: our mirror's upload (files in parallel, large ones in parts, metadata last)
against a plain `s3fs.put(..., recursive=True)` of the same files, in the same process, to a local S3 endpoint
(moto in server mode on 127.0.0.1). Rounds alternate which goes first (ABBA) and every copy goes to a fresh
prefix, so neither pays for the other's leftovers. Also prints the read-back verification (every object
hashed against the checkpoint's checksums), which the mirror adds before it records a copy.

    python benchmarks/mirror_upload.py [--rounds 4] [--files 8] [--mib 16]
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
STEP = 10


def make_checkpoint(root: Path, files: int, mib: int) -> Path:
    from megatron_llm.training.checkpoint.format import describe_files, iter_dir, write_metadata

    directory = iter_dir(root, STEP)
    directory.mkdir(parents=True)
    for rank in range(files):
        (directory / f"__{rank}_0.distcp").write_bytes(os.urandom(mib << 20))
    (directory / "common.pt").write_bytes(os.urandom(4096))
    names = sorted(p.name for p in directory.iterdir())
    write_metadata(directory, {"step": STEP, "files": describe_files(directory, names)})
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
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
        sizes = {p.name: p.stat().st_size for p in directory.iterdir()}
        plain_fs = s3fs.S3FileSystem(skip_instance_cache=True)
        ours, plain, verify = [], [], []
        for i in range(args.rounds):
            for which in (("ours", "plain") if i % 2 == 0 else ("plain", "ours")):
                if which == "ours":
                    store = Store(f"s3://bench/ours{i}")
                    begin = time.perf_counter()
                    store.upload(directory)
                    ours.append(time.perf_counter() - begin)
                    begin = time.perf_counter()
                    problems = store.problems(STEP, deep=True)
                    verify.append(time.perf_counter() - begin)
                    assert problems == [], problems
                else:
                    begin = time.perf_counter()
                    plain_fs.put(str(directory), f"bench/plain{i}", recursive=True)
                    plain.append(time.perf_counter() - begin)
                    listed = plain_fs.ls(f"bench/plain{i}", detail=True, refresh=True)
                    assert {Path(e["name"]).name: e["size"] for e in listed} == sizes, "plain copy incomplete"
            plain_fs.rm(f"bench/ours{i}", recursive=True)  # keep the endpoint's memory flat across rounds
            plain_fs.rm(f"bench/plain{i}", recursive=True)
        mb = sum(sizes.values()) / 1e6
        o, p, v = statistics.median(ours), statistics.median(plain), statistics.median(verify)
        ratios = [a / b for a, b in zip(ours, plain)]
        print(f"checkpoint: {len(sizes)} files, {mb:.1f} MB; medians of {args.rounds} rounds, order alternating")
        print(f"mirror upload:          {o:7.2f} s  {mb / o:8.1f} MB/s")
        print(f"plain s3fs put:         {p:7.2f} s  {mb / p:8.1f} MB/s")
        print(f"mirror read-back hash:  {v:7.2f} s  {mb / v:8.1f} MB/s (verification, after the upload)")
        print(f"upload time ours/plain: median of rounds {statistics.median(ratios):.3f} "
              f"(rounds {min(ratios):.3f}..{max(ratios):.3f}); with verification {(o + v) / p:.3f}")


if __name__ == "__main__":
    main()
