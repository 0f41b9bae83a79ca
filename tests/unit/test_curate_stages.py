"""Per-document curate stages (normalise, quality, word list) and the config that lists them."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest

from megatron_llm.data.curate.config import load_config, parse_config
from megatron_llm.data.curate.pipeline.plan import steps_of
from megatron_llm.data.curate.stages import gopher
from megatron_llm.data.curate.stages.c4 import C4Rules, apply_c4
from megatron_llm.data.curate.stages.normalize import NormalizeParams, NormalizeStage, normalize_text
from megatron_llm.data.curate.stages.quality import QualityParams, QualityStage
from megatron_llm.data.curate.stages.wordlist import WordlistParams, WordlistStage
from megatron_llm.errors import UsageError

REPO = Path(__file__).resolve().parents[2]
PROSE = (
    "The committee met on Tuesday to review the budget for the coming year. Members agreed that the "
    "library should have longer opening hours, and that the park needs new benches. The chair noted that "
    "the town has received more requests for bicycle lanes than in any year before. A vote on the plan "
    "will be held next month, after the public has had a chance to comment on it. Residents can send "
    "their views by post or bring them to the town hall in person."
)


# normalise ---------------------------------------------------------------------------------------------
def test_normalize_nfc_controls_and_whitespace():
    decomposed = unicodedata.normalize("NFD", "café")
    text = f"  {decomposed}\u00a0\u00a0bar\x00\x07 \t baz\r\nline2 \r\n\n\n\n\nend\ufeff  "
    assert normalize_text(text, NormalizeParams()) == "café bar baz\nline2\n\nend"


def test_normalize_for_code_keeps_indentation_and_blank_lines():
    params = NormalizeParams(collapse_spaces=False, max_blank_lines=None, strip=False)
    code = "def f():\n    return 1   \n\n\n\nx = 2\n"
    assert normalize_text(code, params) == "def f():\n    return 1\n\n\n\nx = 2\n"


def test_normalize_removes_documents_left_empty():
    stage = NormalizeStage("normalize", NormalizeParams())
    assert stage.process(" \x00\n\t ", {}) == ("", "empty")
    assert stage.process("ok", {}) == ("ok", None)


# quality -----------------------------------------------------------------------------------------------
def _quality(**overrides) -> QualityStage:
    return QualityStage("quality", QualityParams(**overrides))


def test_clean_prose_passes_every_rule():
    assert _quality().process(PROSE, {})[1] is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Too short to keep. It has few words.", "gopher_word_count"),
        (" ".join(f"the {w}{i}" for i, w in enumerate(["incomprehensibilities"] * 60)), "gopher_mean_word_length"),
        (PROSE + " # # # # # # # # # # # # # # # # # # # # #", "gopher_symbol_ratio"),
        ("\n".join(f"- item {i} of the list of things to do today." for i in range(30)), "gopher_bullet_lines"),
        ("\n".join(f"{PROSE[:60]} {i}..." for i in range(30)), "gopher_ellipsis_lines"),
        (PROSE + " " + " ".join(f"{10000 + i} --" for i in range(80)), "gopher_alpha_words"),
        (PROSE + " Lorem ipsum dolor sit amet.", "c4_lorem_ipsum"),
        (" ".join(f"Cats sleep {i} hours daily; dogs run fast." for i in range(12)), "gopher_stop_words"),
        ("\n".join([PROSE[:120]] * 4 + [PROSE]), "gopher_duplicate_lines"),
        (PROSE + " " + " ".join(f"big cat number{i}" for i in range(30)), "gopher_top_2gram"),
        (PROSE + " " + "the town hall in person " * 12, "gopher_top_3gram"),
        (PROSE + " function() { return 1; }", "c4_curly_braces"),
        (PROSE.replace(".", ";"), "c4_no_lines_left"),
        (PROSE.replace(". ", "; "), "c4_min_sentences"),
    ],
)
def test_each_rule_names_its_reason(text, reason):
    assert _quality().process(text, {})[1] == reason


def test_thresholds_are_configurable_and_null_turns_a_rule_off():
    short = "Too short to keep. It has few words."
    assert _quality(min_words=3, c4_min_sentences=1, min_stop_words=None).process(short, {})[1] is None
    braces = PROSE + " function() { return 1; }"
    assert _quality(c4_curly_braces=False, c4_terminal_punctuation=False).process(braces, {})[1] is None


def test_c4_removes_javascript_policy_and_unpunctuated_lines():
    rules = C4Rules(True, 3, 1000, True, True, True, False, None)
    text = "A good sentence is here.\nPlease enable JavaScript to view this page.\nMenu Home About\n" + (
        "Read our privacy policy for details.\nAnother good sentence ends here!"
    )
    cleaned, reason = apply_c4(text, rules)
    assert reason is None
    assert cleaned == "A good sentence is here.\nAnother good sentence ends here!"
    assert apply_c4("Menu Home About", rules) == ("", "c4_no_lines_left")


def test_repetition_measures():
    words = "a b c a b c a b c d".split()
    assert gopher.top_ngram_char_fraction(words, 2) == pytest.approx(3 * 2 / 10)
    assert gopher.duplicate_ngram_char_fraction(words, 3) == pytest.approx(9 / 10)
    assert gopher.duplicate_fractions(["x", "y", "x", "x"]) == (0.5, 0.5)


def test_code_rules():
    stage = _quality(
        min_words=1, min_stop_words=None, min_alpha_words_ratio=None, max_symbol_word_ratio=None,
        c4_curly_braces=False, c4_terminal_punctuation=False, c4_min_words_per_line=None, c4_min_sentences=None,
        max_top_ngram_chars_ratio={}, max_duplicate_ngram_chars_ratio={}, max_duplicate_lines_ratio=None,
        max_duplicate_line_chars_ratio=None, max_line_length=100, max_mean_line_length=40,
        min_alphanumeric_ratio=0.25, max_mean_word_length=None, min_mean_word_length=None,
    )  # fmt: skip
    assert stage.process("def f(x):\n    return x + 1\n", {})[1] is None
    assert stage.process("x = '" + "a" * 150 + "'", {})[1] == "code_max_line_length"
    assert stage.process("value_one = compute_the_first_value(argument, other)\n" * 3, {})[1] == "code_mean_line_length"
    assert stage.process("x = {[(+-*/)]};;;; # ####", {})[1] == "code_alphanumeric_ratio"


# word list ---------------------------------------------------------------------------------------------
def test_wordlist_matches_whole_words_and_phrases(tmp_path):
    (tmp_path / "bad.txt").write_text("# one term per line\nbadword\nvery bad phrase  # comment\n", encoding="utf-8")
    stage = WordlistStage("wordlist", WordlistParams(files=["bad.txt"], words=["Ugly"]), tmp_path)
    assert stage.process("A BadWord appears.", {})[1] == "listed_words"
    assert stage.process("this is a very  bad\nphrase indeed", {})[1] == "listed_words"
    assert stage.process("something ugly", {})[1] == "listed_words"
    assert stage.process("badwords and ugliness and a very bad phrases list", {})[1] is None
    strict = WordlistStage("wordlist", WordlistParams(words=["badword"], min_matches=2), tmp_path)
    assert strict.process("badword once", {})[1] is None
    assert strict.process("badword twice badword", {})[1] == "listed_words"


# config ------------------------------------------------------------------------------------------------
def test_example_configs_load():
    for name in ("web", "code"):
        config = load_config(REPO / "examples" / "curate" / f"{name}.yaml")
        assert [s.name for s in config.stages if s.is_dedup] == ["exact_dedup", "minhash_dedup"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"stages": [{"minhash_dedup": {"bands": "x"}}]}, "stages[0].minhash_dedup.bands: expected an integer"),
        ({"stages": [{"minhash_dedup": {"bands": 20, "rows": 8}}]}, "stages[0].minhash_dedup.bands: bands x rows"),
        ({"stages": [{"normalize": {}}, {"quality": {"min_wrds": 3}}]}, "stages[1].quality.min_wrds: unknown"),
        ({"stages": [{"dedupe": {}}]}, "stages[0]: unknown stage 'dedupe'"),
        ({"stages": [{"normalize": {}, "pii": {}}]}, "stages[0]: expected a one-key map"),
        ({"stages": []}, "stages: expected a non-empty list"),
        ({"stages": ["pii"], "txt_key": "x"}, "unknown key 'txt_key'"),
        ({"stages": [{"language": {"min_score": 2}}]}, "stages[0].language.min_score: must be between 0 and 1"),
        ({"stages": [{"wordlist": {"files": ["missing.txt"]}}]}, "stages[0].wordlist.files[0]: cannot read"),
        ({"stages": [{"pii": {"placeholders": {"ssn": "<SSN>"}}}]}, "stages[0].pii.placeholders: unknown type"),
    ],
)
def test_config_errors_name_the_field(tmp_path, data, message):
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        parse_config(data, "c.yaml", tmp_path)


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("stages:\n  - normalize: {\n  - pii\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"c\.yaml:\d+: invalid YAML"):
        load_config(path)


def test_steps_follow_the_dedup_stages(tmp_path):
    config = parse_config(
        {"stages": ["normalize", "exact_dedup", "quality", {"minhash_dedup": {"verify": True}}, "pii", "exact_dedup"]},
        "c.yaml",
        tmp_path,
    )
    assert [s.name for s in steps_of(config)] == [
        "map-0", "exact_dedup.buckets", "exact_dedup.clusters",
        "map-1", "minhash_dedup.buckets", "minhash_dedup.verify", "minhash_dedup.clusters",
        "map-2", "exact_dedup#2.buckets", "exact_dedup#2.clusters",
        "map-3", "finish",
    ]  # fmt: skip
