"""lm-evaluation-harness on our checkpoints natively, and the standard benchmarks from local files.

References: lm-evaluation-harness's own `hf` model on the exported checkpoint (log-likelihoods, rolling
log-likelihoods, greedy generations), and the harness's own task definitions (its MMLU template and ARC task
YAML, included from the installed package) pointed at small files written here in the published layouts:
their prompts (from the harness's --log_samples) and per-choice log-likelihoods are what `megatron-llm
evaluate --task mmlu|arc` must give.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.eval_fixture import REPO, build, command_env, free_port, run

WORKER = Path(__file__).with_name("eval_harness_worker.py")
MAX_GEN = 12


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return build(tmp_path_factory.mktemp("harness"))


@pytest.fixture(scope="module")
def spec(work):
    texts = work["texts"]
    pairs = []
    for text in texts[:10]:
        words = text.split()
        pairs.append([" ".join(words[:8]) + " ", " ".join(words[8:14])])  # trailing space moves to the answer
    pairs.append(["", texts[11][:60]])  # empty context: predicted from end-of-document
    prompts = [texts[20][:80], "Return the", "Return the"]  # two of one length: a batch of two
    spec = {"pairs": pairs, "rolling": [texts[30][:200], " ".join(texts[31:36])], "prompts": prompts,
            "until": ["\n\n"], "max_gen_toks": MAX_GEN}
    path = work["root"] / "requests.json"
    path.write_text(json.dumps(spec))
    return spec


def worker(work, spec, nproc: int = 1, tensor: int = 1, pipeline: int = 1, timed: bool = False) -> dict:
    out = work["root"] / f"out-{nproc}-{tensor}-{pipeline}.json"
    args = [str(WORKER), str(work["checkpoints"]), str(work["root"] / "requests.json"), str(out), str(tensor),
            str(pipeline), str(int(timed))]
    if nproc > 1:
        head = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
                "--master-addr=127.0.0.1", f"--master-port={free_port()}"]
    else:
        head = [sys.executable]
    result = subprocess.run([*head, *args], cwd=REPO, env=command_env(PYTHONPATH=str(REPO)), capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-5000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def reference(work, spec):
    """lm-evaluation-harness's `hf` model on the export, and transformers' greedy generate timed."""
    import time

    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    hf = HFLM(pretrained=str(work["hf"]), dtype="float32", batch_size=2, device="cpu")
    pairs = [Instance("loglikelihood", {}, tuple(p), i) for i, p in enumerate(spec["pairs"])]
    rolling = [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(spec["rolling"])]
    gens = [Instance("generate_until", {}, (p, {"until": spec["until"], "max_gen_toks": MAX_GEN, "do_sample": False}),
                     i) for i, p in enumerate(spec["prompts"])]
    eod = work["tok"].eod_id
    tokens, generated, start = [], 0, time.perf_counter()
    for prompt in spec["prompts"]:
        ids = work["tok"].encode(prompt)
        with torch.no_grad():
            new = hf.model.generate(torch.tensor([ids]), max_new_tokens=MAX_GEN, do_sample=False, eos_token_id=eod,
                                    pad_token_id=eod)[0, len(ids):].tolist()
        tokens.append(new)
        generated += len(new)
    seconds = time.perf_counter() - start
    return {"loglikelihood": hf.loglikelihood(pairs), "rolling": hf.loglikelihood_rolling(rolling),
            "generations": hf.generate_until(gens), "tokens": tokens, "generation_seconds": seconds,
            "generated_tokens": generated}


def assert_agree(ours: dict, ref: dict) -> None:
    for (a, greedy_a), (b, greedy_b) in zip(ours["loglikelihood"], ref["loglikelihood"], strict=True):
        # Sums of up to ~20 token log-probabilities, float32 in transformers (float64 here): near -140 a float32
        # step is 1.5e-5, hence the relative term of about one float32 step.
        assert a == pytest.approx(b, rel=2e-7, abs=1e-5) and greedy_a == greedy_b
    for a, b in zip(ours["rolling"], ref["rolling"], strict=True):
        # Sums over hundreds of tokens near -1000: float32's own spacing there is 6e-5.
        assert a == pytest.approx(b, rel=2e-7, abs=1e-5)
    assert ours["generations"] == ref["generations"]
    if "tokens" in ours:
        assert ours["tokens"] == ref["tokens"]



def test_one_process_agrees_with_the_harness_hf_model(work, spec, reference):
    ours = worker(work, spec, timed=True)
    assert_agree(ours, reference)
    assert any(len(t) > 3 for t in ours["tokens"]) and any(g for g in ours["generations"])
    assert len(spec["rolling"][1]) > 1000  # more tokens than the 256 positions: several windows
    # Negative control: one token less of context (the bug a wrong split of context/continuation makes)
    # moves the log-likelihood far beyond the tolerance.
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    hf = HFLM(pretrained=str(work["hf"]), dtype="float32", batch_size=2, device="cpu")
    context, continuation = spec["pairs"][0]
    words = context.split()
    shifted = hf.loglikelihood([Instance("loglikelihood", {}, (" ".join(words[1:]) + " ", continuation), 0)])
    assert abs(shifted[0][0] - ours["loglikelihood"][0][0]) > 1e-3
    tokens_per_s = {"ours": ours["generated_tokens"] / ours["generation_seconds"],
                    "transformers": reference["generated_tokens"] / reference["generation_seconds"]}
    print(f"greedy generation, batch 1, {ours['generated_tokens']} tokens: "
          f"native {tokens_per_s['ours']:.1f} tokens/s, exported model in transformers "
          f"{tokens_per_s['transformers']:.1f} tokens/s")


@pytest.mark.parametrize(("nproc", "tensor", "pipeline"), [(2, 2, 1), (2, 1, 2)], ids=["tp2", "pp2"])
def test_parallel_layouts_agree_with_the_harness_hf_model(work, spec, reference, nproc, tensor, pipeline):
    assert_agree(worker(work, spec, nproc, tensor, pipeline), reference)


# Standard formats, scored natively and by the harness's own task definitions -----------------------------
HARNESS_TASKS = Path(__import__("lm_eval").__file__).parent / "tasks"


def write_parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def mmlu_rows(texts: list[str], subject: str, count: int, offset: int) -> list[dict]:
    rows = []
    for k in range(count):
        words = texts[offset + k].split()
        rows.append({"question": " ".join(words[:12]) + "?", "subject": subject,
                     "choices": [" ".join(words[12 + 3 * j:15 + 3 * j]) for j in range(4)], "answer": k % 4})
    return rows


def arc_rows(texts: list[str], count: int, offset: int) -> list[dict]:
    rows = []
    for k in range(count):
        words = texts[offset + k].split()
        labels = ["A", "B", "C", "D"] if k % 2 else ["1", "2", "3", "4"]
        rows.append({"id": f"q{k}", "question": " ".join(words[:10]) + "?",
                     "choices": {"text": [" ".join(words[10 + 2 * j:12 + 2 * j]) for j in range(4)], "label": labels},
                     "answerKey": labels[(k + 1) % 4]})
    return rows


@pytest.fixture(scope="module")
def datasets(work):
    texts, root = work["texts"], work["root"] / "data"
    for n, subject in enumerate(("astronomy", "world_religions")):
        write_parquet(root / "mmlu" / subject / "test-00000-of-00001.parquet", mmlu_rows(texts, subject, 3, 40 + 5 * n))
        write_parquet(root / "mmlu" / subject / "dev-00000-of-00001.parquet", mmlu_rows(texts, subject, 5, 60 + 5 * n))
    write_parquet(root / "arc" / "ARC-Easy" / "test-00000-of-00001.parquet", arc_rows(texts, 6, 80))
    write_parquet(root / "arc" / "ARC-Easy" / "train-00000-of-00001.parquet", arc_rows(texts, 8, 90))
    tasks = work["root"] / "tasks"
    tasks.mkdir()
    for subject in ("astronomy", "world_religions"):
        folder = root / "mmlu" / subject
        (tasks / f"local_mmlu_{subject}.yaml").write_text(
            f"include: {HARNESS_TASKS / 'mmlu/default/_default_template_yaml'}\n"
            f"task: local_mmlu_{subject}\ndataset_path: parquet\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    test: {folder / 'test-00000-of-00001.parquet'}\n"
            f"    dev: {folder / 'dev-00000-of-00001.parquet'}\n"
            f"description: \"The following are multiple choice questions (with answers) about "
            f"{subject.replace('_', ' ')}.\\n\\n\"\n")
    (tasks / "local_arc_easy.yaml").write_text(
        f"include: {HARNESS_TASKS / 'arc/arc_easy.yaml'}\ntask: local_arc_easy\ntag: []\ndataset_path: parquet\n"
        f"dataset_name: null\ndataset_kwargs:\n  data_files:\n"
        f"    test: {root / 'arc/ARC-Easy/test-00000-of-00001.parquet'}\n"
        f"    train: {root / 'arc/ARC-Easy/train-00000-of-00001.parquet'}\n"
        "validation_split: null\n")  # few-shot examples from train, as the published task draws them
    return {"root": root, "tasks": tasks}


def lm_eval_samples(work, datasets, model: str, model_args: str, tasks: str, fewshot: int | None) -> dict:
    """Per task and document, the harness's (context, continuation, log-likelihood) of every choice, from its
    --log_samples output."""
    out = work["root"] / f"lm_eval_{model}_{tasks.replace(',', '_')}"
    args = ["--model", model, "--model_args", model_args, "--tasks", tasks, "--include_path", str(datasets["tasks"]),
            "--batch_size", "2", "--log_samples", "--output_path", str(out)]
    if fewshot is not None:
        args += ["--num_fewshot", str(fewshot)]
    if model == "hf":
        command = [sys.executable, "-m", "lm_eval", *args]
    else:
        command = [sys.executable, "-m", "megatron_llm", "lm-eval", *args]
    env = command_env(HF_HOME=str(work["root"] / "hf_home"), HF_DATASETS_CACHE=str(work["root"] / "hf_datasets"))
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-5000:]
    samples = {}
    for path in out.rglob("samples_*.jsonl"):
        task = path.name[len("samples_"):].rsplit("_", 1)[0]
        docs = [json.loads(line) for line in path.read_text().splitlines()]
        samples[task] = {}
        for d in docs:
            args = [d["arguments"][k] for k in sorted(d["arguments"], key=lambda k: int(k.rsplit("_", 1)[1]))]
            samples[task][d["doc_id"]] = [(a["arg_0"], a["arg_1"], float(r[0]))
                                          for a, r in zip(args, d["filtered_resps"], strict=True)]
    return samples


HARNESS_TASKS_RUN = "local_arc_easy,local_mmlu_astronomy,local_mmlu_world_religions"
SUBJECTS = ("astronomy", "world_religions")


@pytest.fixture(scope="module")
def hf_samples(work, datasets):
    """The harness's `hf` model on the export, 5-shot (MMLU's default; ARC's examples from its train split)."""
    return lm_eval_samples(work, datasets, "hf", f"pretrained={work['hf']},dtype=float32", HARNESS_TASKS_RUN, 5)


def test_lm_eval_cli_with_our_model_equals_hf_model(work, datasets, hf_samples):
    ours = lm_eval_samples(work, datasets, "megatron-llm", f"checkpoint={work['checkpoints']}", HARNESS_TASKS_RUN, 5)
    assert set(ours) == set(hf_samples) == set(HARNESS_TASKS_RUN.split(","))
    for task in hf_samples:
        for doc, choices in hf_samples[task].items():
            assert [c[:2] for c in ours[task][doc]] == [c[:2] for c in choices]
            assert [c[2] for c in ours[task][doc]] == float32_approx([c[2] for c in choices])


def float32_approx(expected: list[float]):
    """The `hf` model's sums are float32 (ours float64): 1e-5, and about one float32 step (2e-7 relative) for
    the long ARC answers whose sums reach -95, where a float32 step is 7.6e-6."""
    return pytest.approx(expected, rel=2e-7, abs=1e-5)


def harness_choices(hf_samples: dict, tasks: list[str]) -> list[list[tuple[str, str, float]]]:
    """Per document (tasks in order, documents in file order), the harness's choices."""
    return [hf_samples[t][d] for t in tasks for d in sorted(hf_samples[t])]


def test_native_mmlu_and_arc_equal_the_harness_task_definitions(work, datasets, hf_samples):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from megatron_llm.evaluation.benchmark_runner import TaskOptions, loglik_questions

    data = datasets["root"]
    mmlu_ref = harness_choices(hf_samples, [f"local_mmlu_{s}" for s in SUBJECTS])
    arc_ref = harness_choices(hf_samples, ["local_arc_easy"])
    # The prompts, character for character: description, the dev split's first 5 in order, the delimiters; for
    # ARC the 5 train questions the harness's seeded sampler draws for each question in turn. (The contexts are
    # longer than the model's 256 positions, so the scores alone would not see their beginnings.)
    for task, ref in (("mmlu", mmlu_ref), ("arc", arc_ref)):
        questions = loglik_questions(task, data / task, TaskOptions(num_fewshot=5))
        assert [[(q.context, c) for c in q.continuations] for q in questions] == [[c[:2] for c in r] for r in ref]
    assert mmlu_ref[0][0][0].startswith("The following are multiple choice questions (with answers) about astronomy")
    assert arc_ref[0][0][0].count("Question:") == 6
    # Where the harness would fail (too few examples) or leak answers (examples from the questions asked).
    from megatron_llm.errors import UsageError

    with pytest.raises(UsageError, match="6-shot needs 6 few-shot examples, found 5"):
        loglik_questions("mmlu", data / "mmlu", TaskOptions(num_fewshot=6))
    with pytest.raises(UsageError, match="one file has no train split"):
        loglik_questions("arc", data / "arc/ARC-Easy/test-00000-of-00001.parquet", TaskOptions(num_fewshot=1))
    with pytest.raises(UsageError, match="--split train: arc's few-shot examples come from that split"):
        loglik_questions("arc", data / "arc", TaskOptions(split="train", num_fewshot=1))

    # The scores of `megatron-llm evaluate --task` on the checkpoint (not the export).
    output = json.loads(run("evaluate", "--checkpoint", str(work["checkpoints"]), "--task", "mmlu", "--task", "arc",
                            "--data", str(data / "mmlu"), str(data / "arc"), "--num-fewshot", "5", "--details",
                            "--json").stdout)
    mmlu, arc = output["results"]
    for result, ref in ((mmlu, mmlu_ref), (arc, arc_ref)):
        assert [len(i["logprobs"]) for i in result["items"]] == [len(r) for r in ref]
        ours, theirs = [v for i in result["items"] for v in i["logprobs"]], [c[2] for r in ref for c in r]
        assert ours == float32_approx(theirs)
        print(f"native {result['task']} vs the harness's task: {len(ours)} log-likelihoods, max |difference| "
              f"{max(abs(a - b) for a, b in zip(ours, theirs)):.1e}")
    assert mmlu["num_fewshot"] == arc["num_fewshot"] == 5 and set(mmlu["groups"]) == set(SUBJECTS)
    assert mmlu["metrics"]["acc"] == pytest.approx(sum(g["acc"] for g in mmlu["groups"].values()) / 2)

    # Negative controls, scored by the harness's `hf` model: the prompt differences the comparison guards
    # against move a log-likelihood far beyond the tolerance (this barely trained model leans little on its
    # context, yet each moves it by 4e-4 or more: ARC zero-shot, the difference once found here, by 6e-4).
    hf = HFLM(pretrained=str(work["hf"]), dtype="float32", batch_size=2, device="cpu")
    arc_context, arc_answer, arc_value = arc_ref[0][0]
    mmlu_context, mmlu_answer, mmlu_value = mmlu_ref[0][0]
    shots = arc_context.split("\n\n")
    variants = {
        "harness prompt (as logged)": (arc_context, arc_answer, arc_value),
        "ARC zero-shot": (shots[-1], arc_answer, arc_value),
        "ARC examples in reverse order": ("\n\n".join(shots[-2::-1] + shots[-1:]), arc_answer, arc_value),
        "ARC few-shot delimiter \\n": (arc_context.replace("\n\n", "\n"), arc_answer, arc_value),
        "MMLU few-shot delimiter \\n": (mmlu_context.replace("\n\n", "\n"), mmlu_answer, mmlu_value),
        "MMLU without the target delimiter": (mmlu_context, mmlu_answer.lstrip(), mmlu_value),
    }
    scored = hf.loglikelihood([Instance("loglikelihood", {}, v[:2], i) for i, v in enumerate(variants.values())])
    moved = {name: abs(s[0] - v[2]) for (name, v), s in zip(variants.items(), scored)}
    print("harness hf, |change| of one log-likelihood:", {k: f"{v:.2e}" for k, v in moved.items()})
    assert moved.pop("harness prompt (as logged)") < 1e-5
    assert min(moved.values()) > 1e-4
