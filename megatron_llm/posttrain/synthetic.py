"""Small synthetic instruction, preference and multiple-choice data ("reverse this word", "add these numbers")
and a byte-level BPE tokenizer trained on it: enough to watch SFT, DPO and evaluation work on a CPU."""

from __future__ import annotations

import json
import random
from pathlib import Path

LETTERS = "abcdefgh"


def _task(rng: random.Random) -> tuple[str, str, list[str]]:
    """(instruction, answer, three wrong answers of the same form)."""
    if rng.random() < 0.5:
        a, b = rng.randrange(10), rng.randrange(10)
        answer = a + b
        wrong = rng.sample([n for n in range(19) if n != answer], 3)
        return f"add these numbers: {a} + {b}", str(answer), [str(n) for n in wrong]
    word = "".join(rng.choice(LETTERS) for _ in range(3))
    while word == word[::-1]:
        word = "".join(rng.choice(LETTERS) for _ in range(3))
    answer = word[::-1]
    wrong = [word]  # the most tempting wrong answer: the word unchanged
    while len(wrong) < 3:
        candidate = "".join(rng.choice(LETTERS) for _ in range(3))
        if candidate != answer and candidate not in wrong:
            wrong.append(candidate)
    return f"reverse this word: {word}", answer, wrong


def tasks(count: int, seed: int) -> list[tuple[str, str, list[str]]]:
    rng = random.Random(seed)
    return [_task(rng) for _ in range(count)]


def chat_records(items: list[tuple[str, str, list[str]]]) -> list[dict]:
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a, _ in items]


REFUSAL = "sorry, i cannot do that"


def preference_records(items: list[tuple[str, str, list[str]]]) -> list[dict]:
    """The right answer is preferred over a refusal (even items) or a wrong answer of the same form (odd)."""
    return [{"prompt": q, "chosen": a, "rejected": REFUSAL if k % 2 == 0 else wrong[0]}
            for k, (q, a, wrong) in enumerate(items)]


def mc_records(items: list[tuple[str, str, list[str]]], render_prompt, seed: int) -> list[dict]:
    """Questions whose context is the rendered chat prompt and whose choices are answers (one right)."""
    rng = random.Random(seed)
    records = []
    for q, a, wrong in items:
        choices = [a, *wrong]
        rng.shuffle(choices)
        records.append({"context": render_prompt(q), "choices": choices, "answer": choices.index(a)})
    return records


def write_jsonl(path: str | Path, records: list[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_tokenizer(directory: str | Path, texts: list[str], vocab_size: int = 320,
                    chat_template: str | None = None) -> Path:
    """A byte-level BPE tokenizer directory (megatron-llm's format) trained on `texts`; EOD is `<|endoftext|>`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from megatron_llm.data.tokenizers.tokenizer import MODEL_FILES, HFTokenizer, write_manifest

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(texts, trainer=trainer)
    (directory / MODEL_FILES["hf"]).write_text(backend.to_str())
    eod = backend.token_to_id("<|endoftext|>")
    tokenizer = HFTokenizer(backend.to_str(), eod, pad_id=eod, special_tokens=["<|endoftext|>"],
                            chat_template=chat_template)
    write_manifest(directory, tokenizer)
    return directory
