"""Checkpoint replication to a real S3 endpoint (moto in server mode on 127.0.0.1, reached over HTTP by the same
s3fs/botocore client users run, configured only through AWS_ENDPOINT_URL and credentials variables).

- The store: an upload is read back and verified against the local checksums; one flipped byte in an object
  (written behind our back with boto3) is named; a damaged newest copy makes `fetch` fall back to the older one.
- Training with `checkpoint.mirror=s3://...`: the trainer SIGKILLed while uploading step 4 leaves the mirror's
  tracker on step 2 (no partial copy recorded); the next run uploads step 4 first; retention keeps the last two
  copies on S3; `--resume-from s3://.../iter_0000006` in a fresh run directory replays the same losses bit for
  bit, and with the local checkpoint directory deleted the run resumes from the newest mirror copy (step 8) and
  trains steps 9 and 10 bit for bit as the run resumed from step 6 did.
"""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest

from megatron_llm.training.checkpoint.format import iter_dir, read_metadata, read_tracker, verify_directory
from tests.distributed.ckpt_runs import losses, metrics, train
from tests.local_servers import S3_ENV, s3_endpoint
from tests.unit.test_checkpoint_format import fake_checkpoint

# The module fixture launches several training runs: slow when the machine is shared.
pytestmark = pytest.mark.timeout(3600)
BUCKET = "durable"
RUN = ["schedule.train_iters=10", "optim.lr_decay_iters=10", "checkpoint.save_interval=2", "checkpoint.keep_last=2",
       "logging.system_metrics=false"]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """The endpoint URL, with this process's environment pointing boto3/s3fs at it (restored afterwards)."""
    work = tmp_path_factory.mktemp("s3")
    saved = {k: os.environ.get(k) for k in [*S3_ENV, "AWS_ENDPOINT_URL"]}
    with s3_endpoint(work) as url:
        os.environ.update(S3_ENV)
        os.environ["AWS_ENDPOINT_URL"] = url
        import boto3

        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield url
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _objects(prefix: str) -> dict[str, bytes]:
    import boto3

    client = boto3.client("s3")
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix):]: client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listed}


def test_upload_is_verified_and_a_corrupted_object_is_named(s3, tmp_path):
    from megatron_llm.training.checkpoint.mirror import Mirror
    from megatron_llm.training.checkpoint.remote_store import Store, fetch

    mirror = Mirror(f"s3://{BUCKET}/unit", keep_last=None)
    sources = {step: fake_checkpoint(tmp_path / "src", step) for step in (2, 4)}
    for step in (2, 4):
        mirror.submit(sources[step])
    mirror.close()
    assert mirror.errors == []
    # Independent read-back with boto3: every object byte-identical to the local file it came from.
    for step, directory in sources.items():
        stored = _objects(f"unit/iter_{step:07d}/")
        assert sorted(stored) == sorted(p.name for p in directory.iterdir())
        assert all(stored[name] == (directory / name).read_bytes() for name in stored)
    assert _objects("unit/latest_checkpointed_iteration.txt") == {"": b"4\n"}
    store = Store(f"s3://{BUCKET}/unit")
    assert store.problems(4, deep=True) == []
    # One flipped byte in an object of step 4, the same size: only a checksum can see it.
    import boto3

    key = "unit/iter_0000004/__1_0.distcp"
    body = bytearray(_objects(key)[""])
    body[7] ^= 0x01
    boto3.client("s3").put_object(Bucket=BUCKET, Key=key, Body=bytes(body))
    assert store.problems(4, deep=False) == []
    problems = store.problems(4, deep=True)
    assert len(problems) == 1 and "__1_0.distcp" in problems[0] and "checksum" in problems[0]
    restored = fetch(f"s3://{BUCKET}/unit", tmp_path / "down")
    assert restored == tmp_path / "down" / "iter_0000002", "the damaged newest copy is skipped"
    assert verify_directory(restored) == []
    assert all((restored / p.name).read_bytes() == p.read_bytes() for p in sources[2].iterdir())


@pytest.fixture(scope="module")
def mirrored(s3, tmp_path_factory):
    work = tmp_path_factory.mktemp("mirrored")
    run, url = work / "run", f"s3://{BUCKET}/ckpt"
    sets = RUN + [f"checkpoint.mirror={url}"]
    out = {"run": run, "work": work, "url": url}
    # exit_interval=4: the run ends at step 4 and waits for its uploads, so the kill lands in step 4's upload.
    out["killed"] = train(run, sets + ["schedule.exit_interval=4"], fault="kill_during_mirror_step4")
    out["after_kill"] = {k: v for k, v in _objects("ckpt/").items() if not k.endswith(".distcp")}
    out["after_kill_keys"] = sorted(_objects("ckpt/"))
    out["second"] = train(run, sets + ["schedule.exit_interval=4"])
    out["second_metrics"] = losses(metrics(run))
    out["step8_digests"] = {n: e["sha256"] for n, e in read_metadata(iter_dir(run / "checkpoints", 8))["files"].items()}
    out["s3_after_second"] = sorted({k.split("/")[0] for k in _objects("ckpt/")})
    out["fresh"] = train(work / "fresh", RUN, args=("--resume-from", f"{url}/iter_0000006"))
    out["fresh_metrics"] = losses(metrics(work / "fresh"))
    shutil.rmtree(run / "checkpoints")
    lines_before = len(metrics(run))
    out["fallback"] = train(run, sets)
    out["fallback_records"] = metrics(run)[lines_before:]
    return out


def _ok(proc) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_killed_mid_upload_never_records_a_partial_copy(mirrored):
    assert mirrored["killed"].returncode == -9, mirrored["killed"].stderr[-2000:]
    keys, small = mirrored["after_kill_keys"], mirrored["after_kill"]
    assert small["latest_checkpointed_iteration.txt"] == b"2\n"
    assert "iter_0000002/megatron_llm.json" in keys
    assert any(k.startswith("iter_0000004/") for k in keys), "the upload of step 4 had started"
    assert "iter_0000004/megatron_llm.json" not in keys, "a partial copy must never look complete"


def test_next_run_completes_the_upload_and_retention_applies_on_s3(mirrored):
    _ok(mirrored["second"])
    assert mirrored["s3_after_second"] == ["iter_0000006", "iter_0000008", "latest_checkpointed_iteration.txt"]
    assert _objects("ckpt/latest_checkpointed_iteration.txt") != {}


def test_resume_from_the_mirror_with_the_local_directory_deleted(mirrored):
    proc, run = mirrored["fallback"], mirrored["run"]
    _ok(proc)
    assert f"downloaded {mirrored['url']} step 8" in proc.stderr
    assert "resumed from" in proc.stderr and "at step 8" in proc.stderr
    downloaded = read_metadata(iter_dir(run / "checkpoints", 8))["files"]
    assert {n: e["sha256"] for n, e in downloaded.items()} == mirrored["step8_digests"]
    assert read_tracker(run / "checkpoints") == 10
    # The resumed run trains only steps 9 and 10 (a resume from the older copy, step 6, would log 7..10), and
    # bit for bit as the run resumed from step 6 in one process trained them: state, schedule and data position.
    resumed = losses(mirrored["fallback_records"])
    assert sorted(resumed) == [9, 10]
    assert [resumed[s] for s in (9, 10)] == [mirrored["fresh_metrics"][s] for s in (9, 10)]
    # Control: consecutive steps differ far beyond bit equality, so a resume one step off would not match.
    assert abs(resumed[9] - resumed[10]) > 1e-4


def test_resume_from_an_s3_url_replays_the_same_losses_bit_for_bit(mirrored):
    _ok(mirrored["fresh"])
    fresh = mirrored["fresh_metrics"]
    assert sorted(fresh) == [7, 8, 9, 10]
    # The reference is the second run, which trained steps 5..8 in one process without a resume at step 6.
    assert [fresh[s] for s in (7, 8)] == [mirrored["second_metrics"][s] for s in (7, 8)]
    # Control: consecutive steps differ far beyond bit equality, so equal losses mean the same state.
    assert abs(fresh[7] - fresh[8]) > 1e-4


def test_file_digest_helper_matches_hashlib(tmp_path):
    """The checksums the mirror relies on are plain SHA-256 (checked against hashlib directly)."""
    from megatron_llm.training.checkpoint.format import file_digest

    data = os.urandom(3 << 20)
    (tmp_path / "blob").write_bytes(data)
    assert file_digest(tmp_path / "blob") == hashlib.sha256(data).hexdigest()
