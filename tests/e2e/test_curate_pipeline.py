"""`megatron-llm curate` end to end on mixed inputs: every stage, malformed lines, pass-through fields,
the report's reconciliation, reruns and the errors that exit 2."""

from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from megatron_llm import cli
from megatron_llm.data.curate import report_command as report
from megatron_llm.data.curate.corpus import stdlib_docstrings

REPO = Path(__file__).resolve().parents[2]
GERMAN = [
    "Der Zug nach Hamburg hatte heute Morgen wieder einmal zwanzig Minuten Verspätung.",
    "Meine Großmutter backt jeden Sonntag einen Apfelkuchen für die ganze Familie.",
    "Im Sommer fahren wir mit dem Fahrrad an den See und bleiben bis zum Abend.",
    "Die Bibliothek in unserer Stadt hat jetzt auch am Samstag bis achtzehn Uhr geöffnet.",
    "Nach dem Regen roch der Wald nach nassem Moos und frischer Erde.",
]
RUSSIAN = "Вчера вечером мы долго гуляли по набережной и разговаривали о планах на лето. " * 3
CONFIG = """\
text_key: body
stages:
  - normalize: {}
  - exact_dedup: {}
  - language: {languages: [en, de], min_score: 0.4}
  - quality:
      min_words: 20
      min_stop_words: null
      max_symbol_word_ratio: null
      min_alpha_words_ratio: 0.5
      c4_terminal_punctuation: false
      c4_curly_braces: false
      c4_min_sentences: null
      c4_min_words_per_line: null
      max_top_ngram_chars_ratio: {}
      max_duplicate_ngram_chars_ratio: {}
  - minhash_dedup: {}
  - wordlist: {words: [zorblax]}
  - pii: {}
"""


@dataclass
class Run:
    root: Path
    args: list[str]
    docs: list[dict]
    list_line: int  # line of b.jsonl.gz whose text is a list

    def __iter__(self):
        return iter((self.root, self.args, self.docs))


def _german(rng: random.Random) -> str:
    return " ".join(rng.sample(GERMAN, 4))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    rng = random.Random(5)
    english = stdlib_docstrings(60, min_chars=400)
    docs = [{"id": f"en{i}", "body": text, "meta": {"n": i, "tags": ["a", "b"]}} for i, text in enumerate(english)]
    docs += [{"id": f"de{i}", "body": _german(rng), "meta": None} for i in range(15)]
    docs.append({"id": "ru", "body": RUSSIAN})
    docs.append({"id": "dup", "body": "  " + docs[3]["body"].replace(" ", "   ") + "\n\n\n"})
    docs.append({"id": "listed", "body": _german(rng) + " Zorblax!"})
    docs[7]["body"] += " Write to jane.roe@example.org or visit 93.184.216.34 today."
    rng.shuffle(docs)
    thirds = [docs[i::4] for i in range(4)]
    raw = root / "raw"
    raw.mkdir()
    lines = [json.dumps(d, ensure_ascii=False).encode() for d in thirds[0]]
    lines[2:2] = [b"{not json", json.dumps({"id": "nobody"}).encode(), b'{"body": "caf\xe9"}']
    (raw / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    gz = [json.dumps(d).encode() for d in thirds[1]] + [json.dumps({"body": ["a", "list"]}).encode()]
    (raw / "b.jsonl.gz").write_bytes(gzip.compress(b"\n".join(gz) + b"\n"))
    zst = b"\n".join(json.dumps(d).encode() for d in thirds[2]) + b"\n"
    (raw / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(zst))
    table = pa.table(
        {
            "id": [d["id"] for d in thirds[3]],
            "body": [d["body"] for d in thirds[3]],
            "rank": list(range(len(thirds[3]))),
        }
    )
    pq.write_table(table, raw / "d.parquet")
    config = root / "curate.yaml"
    config.write_text(CONFIG, encoding="utf-8")
    args = ["curate", "--input", str(raw / "*"), "--output", str(root / "out"), "--config", str(config)]
    assert cli.main(args) == 0
    return Run(root, args, docs, list_line=len(thirds[1]) + 1)


def _kept(out: Path) -> list[dict]:
    return [json.loads(line) for p in sorted(out.glob("part-*.jsonl")) for line in p.read_text().splitlines()]


def _rejects(out: Path) -> list[dict]:
    return [json.loads(line) for p in sorted(out.glob("rejects/*.jsonl")) for line in p.read_text().splitlines()]


def test_kept_documents_pass_fields_through_and_gain_language(run):
    root, _, docs = run
    by_id = {d["id"]: d for d in docs}
    kept = _kept(root / "out")
    assert len(kept) >= 50
    for doc in kept:
        original = by_id[doc["id"]]
        for key, value in original.items():
            if key != "body" and (key != "meta" or "rank" not in doc):  # Parquet rows have no `meta`
                assert doc[key] == value
        assert doc["language"] in ("en", "de") and 0.4 <= doc["language_score"] <= 1.0
    assert {d["language"] for d in kept} == {"en", "de"}
    assert any("rank" in d for d in kept), "Parquet columns pass through"


def test_removed_documents_and_malformed_lines_are_in_rejects_with_reasons(run):
    root = run.root
    rejects = _rejects(root / "out")
    by_id = {r["doc"]["id"]: r for r in rejects if "doc" in r}
    assert (by_id["dup"]["stage"], by_id["dup"]["reason"]) == ("exact_dedup", "duplicate")
    assert by_id["dup"]["duplicate_of"].startswith(str(root / "raw"))
    assert (by_id["ru"]["stage"], by_id["ru"]["reason"]) == ("language", "other_language")
    assert (by_id["listed"]["stage"], by_id["listed"]["reason"]) == ("wordlist", "listed_words")
    malformed = sorted((r["source"].rsplit("/", 1)[1], r["reason"]) for r in rejects if r["stage"] == "input")
    assert malformed == [
        ("a.jsonl:3", "bad_json"),
        ("a.jsonl:4", "missing_key"),
        ("a.jsonl:5", "invalid_utf8"),
        (f"b.jsonl.gz:{run.list_line}", "bad_json"),
    ]
    assert all({"stage", "reason", "source"} <= set(r) for r in rejects)


def test_pii_is_redacted_in_the_output(run):
    root, _, _ = run
    text = "\n".join(d["body"] for d in _kept(root / "out"))
    assert "jane.roe@example.org" not in text and "93.184.216.34" not in text
    assert "<EMAIL_ADDRESS>" in text and "<IP_ADDRESS>" in text


def test_report_reconciles_input_with_kept_plus_removed(run, capsys):
    root, _, docs = run
    assert report.main([str(root / "out")]) == 0
    text = capsys.readouterr().out
    assert "reconciliation: OK" in text
    for stage in ("normalize", "exact_dedup", "language", "quality", "minhash_dedup", "wordlist", "pii"):
        assert stage in text
    assert "a.jsonl:3: invalid JSON" in text
    assert report.main([str(root / "out"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    totals = data["totals"]
    assert totals["records"] == len(docs) + 4
    assert totals["records"] == totals["malformed"] + totals["removed"] + totals["kept"]
    assert [row["stage"] for row in data["stages"]][0] == "normalize"
    pii = sum(f["counters"].get("pii", {}).get("email", 0) for f in data["files"])
    assert pii == 1


def test_report_detects_a_lost_line(run, tmp_path, capsys):
    root, _, _ = run
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(root / "out", copy)
    first = sorted(copy.glob("part-*.jsonl"))[0]
    first.write_text("".join(first.read_text().splitlines(keepends=True)[1:]))
    assert report.main([str(copy)]) == 1
    assert "reconciliation FAILED" in capsys.readouterr().out


def test_rerun_is_a_no_op_and_a_different_config_is_refused(run, capsys):
    root, args, _ = run
    before = {p: p.read_bytes() for p in (root / "out").rglob("*.jsonl")}
    assert cli.main(args) == 0
    assert "already holds this finished run" in capsys.readouterr().err
    assert before == {p: p.read_bytes() for p in (root / "out").rglob("*.jsonl")}
    other = root / "other.yaml"
    other.write_text(CONFIG.replace("min_words: 20", "min_words: 21"), encoding="utf-8")
    assert cli.main([*args[:-1], str(other)]) == 2
    assert "different config or inputs" in capsys.readouterr().err


def test_on_error_fail_stops_at_the_first_malformed_line(run, tmp_path, capsys):
    root, args, _ = run
    out = tmp_path / "strict"
    assert cli.main(["curate", "--input", str(root / "raw" / "a.jsonl"), "--output", str(out),
                     "--config", args[-1], "--on-error", "fail"]) == 2  # fmt: skip
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("megatron-llm curate: error: ") and "a.jsonl:3: invalid JSON" in message
    assert not list(out.glob("part-*.jsonl"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--shard", "4/4"], "--shard: need 0 <= I < N"),
        (["--step", "nope"], "--step: unknown step 'nope'"),
        (["--workers", "0"], "--workers: must be >= 1"),
    ],
)
def test_usage_errors_exit_2(run, extra, message, capsys):
    _, args, _ = run
    assert cli.main([*args[:4], args[4] + "-new", *args[5:], *extra]) == 2
    assert message in capsys.readouterr().err


def test_output_directory_with_foreign_files_is_refused(run, tmp_path, capsys):
    _, args, _ = run
    (tmp_path / "notes.txt").write_text("mine")
    assert cli.main([*args[:4], str(tmp_path), *args[5:]]) == 2
    assert "which curate did not write" in capsys.readouterr().err


def test_example_web_config_runs(run, tmp_path):
    """examples/curate/web.yaml (text_key: text, English only) on the fixture's documents under that key."""
    _, _, docs = run
    web = [{"id": d["id"], "text": d["body"]} for d in docs if isinstance(d.get("body"), str)]
    source = tmp_path / "web.jsonl.zst"
    source.write_bytes(zstandard.ZstdCompressor().compress(b"".join(json.dumps(d).encode() + b"\n" for d in web)))
    out = tmp_path / "web"
    config = str(REPO / "examples" / "curate" / "web.yaml")
    assert cli.main(["curate", "--input", str(source), "--output", str(out), "--config", config]) == 0
    assert report.main([str(out)]) == 0
    kept = [json.loads(line)["id"] for part in sorted(out.glob("part-*.jsonl")) for line in part.open()]
    assert kept and all(doc_id.startswith("en") for doc_id in kept)  # German, Russian and the copy are gone
    assert len(kept) < len(web)
