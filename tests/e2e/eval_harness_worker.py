"""Worker for test_eval_harness: the `megatron-llm` harness model's answers in this process's layout.

argv: checkpoint, requests.json, output.json, tensor, pipeline, timed (0/1). Run alone or under torchrun; rank 0 writes
{loglikelihood: [[logprob, greedy]...], rolling: [...], generations: [text...], tokens: [[ids]...],
generation_seconds, generated_tokens}.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    import torch.distributed as dist
    from lm_eval.api.instance import Instance

    from megatron_llm.evaluation.generation import Request
    from megatron_llm.evaluation.harness import MegatronLM

    checkpoint, requests_path, output_path, tensor, pipeline, timed = sys.argv[1:7]
    spec = json.loads(open(requests_path).read())
    lm = MegatronLM(checkpoint=checkpoint, tensor=int(tensor), pipeline=int(pipeline), batch_size=2,
                    max_gen_toks=spec["max_gen_toks"])
    pairs = [Instance("loglikelihood", {}, tuple(p), i) for i, p in enumerate(spec["pairs"])]
    rolling = [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(spec["rolling"])]
    gens = [Instance("generate_until", {}, (p, {"until": spec["until"], "max_gen_toks": spec["max_gen_toks"],
                                               "do_sample": False}), i) for i, p in enumerate(spec["prompts"])]
    out = {"loglikelihood": lm.loglikelihood(pairs), "rolling": lm.loglikelihood_rolling(rolling),
           "generations": lm.generate_until(gens)}
    if timed == "1":  # raw greedy tokens, batch 1, timed (for the tokens/s comparison)
        native = lm.native
        requests = [Request(native.encode(p), spec["max_gen_toks"]) for p in spec["prompts"]]
        start = time.perf_counter()
        generated = native.generate(requests, batch_size=1)
        out["generation_seconds"] = time.perf_counter() - start
        out["tokens"] = [g.tokens for g in generated]
        out["generated_tokens"] = sum(len(g.tokens) for g in generated)
    if not dist.is_initialized() or dist.get_rank() == 0:
        with open(output_path, "w") as handle:
            json.dump(out, handle)
    from megatron_llm.runtime.distributed import destroy_distributed

    destroy_distributed()


if __name__ == "__main__":
    main()
