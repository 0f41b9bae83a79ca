"""Runs under torchrun (TP2·PP2): scores packed samples of several documents with `data.document_mask`, and
every document segment of them alone. argv: OUTPUT_JSON SHARD_PREFIX. Rank 0 writes, per packed sample,
its log-probability with and without the document mask and the sum over its segments run alone."""

import json
import sys
import warnings

import torch

from megatron_llm.config import load_config
from megatron_llm.evaluation.scoring import score_samples
from megatron_llm.model.builder import build_model_chunks
from megatron_llm.runtime.distributed import destroy_distributed, init_distributed, set_seeds
from megatron_llm.runtime.hardware import detect_platform
from megatron_llm.training.data import build_datasets, tokenizer_info

EOD, SEQ, SAMPLES = 256, 64, 6


def segments_alone(sample: dict) -> list[dict]:
    """Each run of tokens up to and including an EOD (and the tail after the last), alone at position 0."""
    tokens = sample["tokens"]
    ends = [int(i) + 1 for i in torch.nonzero(tokens == EOD).reshape(-1)] + [SEQ]
    starts = [0] + ends[:-1]
    alone = []
    for start, end in zip(starts, ends):
        if end <= start:
            continue
        n = end - start
        piece = {"tokens": torch.zeros(SEQ, dtype=torch.int64), "labels": torch.zeros(SEQ, dtype=torch.int64),
                 "loss_mask": torch.zeros(SEQ), "position_ids": torch.arange(SEQ)}
        for key in ("tokens", "labels", "loss_mask"):
            piece[key][:n] = sample[key][start:end]
        alone.append(piece)
    return alone


def main() -> None:
    warnings.filterwarnings("ignore")
    output, prefix = sys.argv[1], sys.argv[2]
    results = {}
    model = None
    for mask in (True, False):
        config = load_config("examples/configs/tiny.yaml", [
            "parallel.tensor=2", "parallel.pipeline=2", "model.vocab_size=257", f"data.seq_length={SEQ}",
            f"data.paths=[{prefix}]", "data.split=100,0,0", f"data.document_mask={str(mask).lower()}",
            "schedule.train_iters=1", f"schedule.global_batch_size={SAMPLES}", "schedule.micro_batch_size=1",
            "schedule.eval_iters=0", "model.init_method_std=0.3", f"data.cache_dir={prefix}-cache-{mask}"])
        if model is None:
            init_distributed(config.parallel)
            set_seeds(config.schedule.seed)
            model = build_model_chunks(config, 257, detect_platform())
        train, _ = build_datasets(config, 1, tokenizer_info(config))
        packed = [{k: torch.as_tensor(v) for k, v in train[i].items()} for i in range(SAMPLES)]
        assert all(("attention_mask" in s) == mask for s in packed)
        results["masked" if mask else "unmasked"] = score_samples(model, packed, SEQ, 1).logprob.tolist()
        if mask:
            results["segments"] = [float(score_samples(model, segments_alone(s), SEQ, 1).logprob.sum())
                                   for s in packed]
            results["documents_per_sample"] = [len(segments_alone(s)) for s in packed]
    if torch.distributed.get_rank() == 0:
        with open(output, "w") as f:
            json.dump(results, f)
    destroy_distributed()


if __name__ == "__main__":
    main()
