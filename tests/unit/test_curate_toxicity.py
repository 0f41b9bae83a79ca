"""The `toxicity` curate stage: shipped multilingual lists, user lists, thresholds, and the rejects file."""

from __future__ import annotations

import json
import re
from importlib import resources

import pytest

from megatron_llm.data.curate import command
from megatron_llm.data.curate.config import parse_config
from megatron_llm.data.curate.stages.toxicity import ToxicityParams, ToxicityStage, shipped_languages, shipped_terms
from megatron_llm.errors import UsageError

CLEAN = ("The council approved the new budget for the library after a long debate about opening hours and the "
         "cost of heating the old building during the winter months")


def reference_hits(text: str, terms: list[str]) -> int:
    """Whole-word, case-insensitive occurrences by a separate route: pad the word sequence with spaces and count
    each term's padded form (phrases as their words joined by one space)."""
    padded = " " + " ".join(re.findall(r"\w+", text.casefold())) + " "
    distinct = {" ".join(re.findall(r"\w+", t.casefold())) for t in terms}  # a term in two lists counts once
    return sum(padded.count(f" {t} ") for t in distinct)


def test_shipped_lists_are_package_data_with_source_and_licence():
    folder = resources.files("megatron_llm.data.curate.stages") / "wordlists"
    readme = (folder / "README.md").read_text("utf-8")
    assert "Source:" in readme and "Licence:" in readme
    languages = shipped_languages()
    assert {"en", "de", "fr", "es", "it", "pt", "nl"} <= set(languages)
    for code in languages:
        terms = shipped_terms(code)
        assert len(terms) >= 8 and all(t == t.strip() and not t.startswith("#") for t in terms)
        assert f"`{code}`" in readme


def test_hits_per_thousand_words_against_a_reference_count():
    stage = ToxicityStage("toxicity", ToxicityParams(max_per_thousand=50.0, min_hits=2), base=None)
    terms = [t for code in shipped_languages() for t in shipped_terms(code)]
    texts = [
        CLEAN,
        "What the fuck is this shit, he said, you stupid bastard. " + CLEAN,
        "Eres un hijo de puta y un cabrón. " + CLEAN,  # a phrase and a word, Spanish
        "Verpiss dich, du Wichser! Fick  dich. " + CLEAN,  # German phrases across a double space
        "Scunthorpe and Essex classes, assessment of cocktails: " + CLEAN,  # substrings must not match
        "SHIT. " + CLEAN,
    ]
    for text in texts:
        doc: dict = {}
        kept = stage.process(text, doc)[1] is None
        hits = reference_hits(text, terms)
        words = len(re.findall(r"\w+", text))
        assert kept == (not (hits >= 2 and 1000 * hits / words > 50.0)), text
        if not kept:
            assert doc["toxicity"]["hits"] == hits and doc["toxicity"]["words"] == words
            assert sum(doc["toxicity"]["terms"].values()) == hits
    # Each listed term counts on its own: "puta" inside "hijo de puta" is a hit of both.
    assert [reference_hits(texts[i], terms) for i in (1, 2, 3)] == [3, 3, 3]
    assert reference_hits(texts[4], terms) == 0
    # Negative control: substring matching (the bug whole-word matching prevents) would flag the clean text.
    assert sum(texts[4].casefold().count(t) for t in terms if " " not in t) >= 2


def test_min_hits_and_rate_thresholds_and_user_lists(tmp_path):
    (tmp_path / "mine.txt").write_text("# project list\nfrobnicate\nzorp zorp\n", encoding="utf-8")
    params = ToxicityParams(languages=[], files=["mine.txt"], words=["blergh"], max_per_thousand=20.0, min_hits=2)
    stage = ToxicityStage("toxicity", params, tmp_path)
    one = "frobnicate " + CLEAN  # one hit in 32 words: 31 per thousand, but below min_hits
    doc: dict = {}
    assert stage.process(one, doc) == (one, None) and "toxicity" not in doc
    two = "frobnicate and zorp  zorp " + CLEAN
    doc = {}
    assert stage.process(two, doc)[1] == "toxic_terms"
    assert doc["toxicity"]["terms"] == {"frobnicate": 1, "zorp zorp": 1}
    long_two = "blergh blergh " + " ".join([CLEAN] * 4)  # 2 hits in 126 words: 15.9 per thousand, kept
    assert stage.process(long_two, {})[1] is None
    assert stage.counters["documents_with_hits"] == 2
    annotated = ToxicityStage("toxicity", ToxicityParams(languages=["en"], annotate=True), tmp_path)
    doc = {}
    annotated.process("shit " + CLEAN, doc)
    assert doc["toxicity"]["terms"] == {"shit": 1}


def test_bad_parameters_name_the_field(tmp_path):
    with pytest.raises(UsageError, match=r"stages\[0\]\.toxicity\.languages\[1\]: no shipped list 'xx'"):
        parse_config({"stages": [{"toxicity": {"languages": ["en", "xx"]}}]}, "c.yaml", tmp_path)
    with pytest.raises(UsageError, match=r"stages\[0\]\.toxicity\.files\[0\]: cannot read"):
        parse_config({"stages": [{"toxicity": {"files": ["missing.txt"]}}]}, "c.yaml", tmp_path)
    with pytest.raises(UsageError, match=r"toxicity\.min_hits: must be >= 1"):
        parse_config({"stages": [{"toxicity": {"min_hits": 0}}]}, "c.yaml", tmp_path)


def test_curate_run_writes_matched_terms_to_the_rejects_file(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    docs = [CLEAN, "Du bist ein Arschloch und ein Wichser. " + CLEAN, "fuck fuck fuck", CLEAN + " hell"]
    (raw / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs), encoding="utf-8")
    (tmp_path / "c.yaml").write_text("stages:\n  - toxicity: {max_per_thousand: 10}\n", encoding="utf-8")
    assert command.main(["--input", str(raw), "--output", str(tmp_path / "out"), "--config",
                         str(tmp_path / "c.yaml")]) == 0
    kept = [json.loads(line)["text"] for line in (tmp_path / "out/part-00000.jsonl").read_text().splitlines()]
    assert kept == [docs[0], docs[3]]
    rejects = [json.loads(line) for p in (tmp_path / "out/rejects").iterdir() for line in p.read_text().splitlines()]
    assert [(r["reason"], r["source"].rsplit(":", 1)[1]) for r in rejects] == [("toxic_terms", "2"),
                                                                              ("toxic_terms", "3")]
    assert rejects[0]["doc"]["toxicity"]["terms"] == {"arschloch": 1, "wichser": 1}
    assert rejects[1]["doc"]["toxicity"] == {"hits": 3, "words": 3, "per_thousand": 1000.0, "terms": {"fuck": 3}}
