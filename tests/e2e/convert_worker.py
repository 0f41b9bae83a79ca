"""Engine side of the conversion tests.

`train OUT_ROOT LAYOUTS_JSON` (under torchrun): trains the tiny model a few steps in each named layout
(a list of `--set` overrides) and lets the training loop save its checkpoint to OUT_ROOT/NAME/checkpoints.
A layout with `schedule.train_iters=0` is only built and saved with `save_model_weights`.

`forward OUT_PT IDS_JSON CKPT...` (one process): loads each checkpoint into a TP=1, PP=1 model with
`load_model_weights` and records its logits on the ids (true vocabulary only) and 8 greedy tokens.
"""

import json
import sys
from pathlib import Path

import torch
from megatron.core import parallel_state

from megatron_llm.config import load_config
from megatron_llm.config.loader import config_from_dict
from megatron_llm.runtime.distributed import init_distributed, set_seeds
from megatron_llm.runtime.hardware import detect_platform

TINY = Path(__file__).parents[2] / "examples/configs/tiny.yaml"
COMMON = ["schedule.train_iters=3", "optim.warmup_iters=1", "schedule.eval_iters=0", "logging.tensorboard=false",
          "logging.progress=false", "checkpoint.save_interval=3"]
NEW_TOKENS = 8


def train(out_root: Path, layouts: dict) -> None:
    from megatron_llm.model.builder import build_model_chunks
    from megatron_llm.training.checkpoint.save_load import save_model_weights
    from megatron_llm.training.setup import build_trainer

    for name, overrides in layouts.items():
        config = load_config(TINY, COMMON + overrides)
        if config.schedule.train_iters == 0:
            init_distributed(config.parallel)
            set_seeds(config.schedule.seed)
            chunks = build_model_chunks(config, config.model.vocab_size, detect_platform())
            save_model_weights(chunks, config, out_root / name / "checkpoints")
        else:
            build_trainer(config, out_root / name).fit()
        torch.distributed.barrier()
        parallel_state.destroy_model_parallel()
    torch.distributed.destroy_process_group()


def _logits(model, ids: list[int], vocab: int) -> torch.Tensor:
    tokens = torch.tensor([ids])
    positions = torch.arange(len(ids)).unsqueeze(0)
    with torch.no_grad():
        return model(tokens, positions, None)[0, :, :vocab].float()


def forward(out: Path, ids: list[int], checkpoints: list[str]) -> None:
    from megatron_llm.model.builder import build_model_chunks
    from megatron_llm.training.checkpoint.format import read_metadata, resolve_checkpoint
    from megatron_llm.training.checkpoint.save_load import load_model_weights

    results = {}
    for path in checkpoints:
        config = config_from_dict(read_metadata(resolve_checkpoint(Path(path)))["config"])
        config.parallel.tensor = config.parallel.pipeline = 1
        config.parallel.virtual_pipeline = None
        init_distributed(config.parallel)
        set_seeds(config.schedule.seed)
        vocab = config.model.vocab_size
        model = build_model_chunks(config, vocab, detect_platform())[0]
        load_model_weights([model], path)
        model.eval()
        generated = list(ids)
        for _ in range(NEW_TOKENS):
            generated.append(int(_logits(model, generated, vocab)[-1].argmax()))
        results[path] = {"logits": _logits(model, ids, vocab), "generated": generated[len(ids):]}
    torch.save(results, out)


if __name__ == "__main__":
    if sys.argv[1] == "train":
        train(Path(sys.argv[2]), json.loads(sys.argv[3]))
    else:
        forward(Path(sys.argv[2]), json.loads(Path(sys.argv[3]).read_text()), sys.argv[4:])
