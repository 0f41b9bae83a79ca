"""lm-evaluation-harness on our checkpoints, without exporting them: the `megatron-llm` model class.

`megatron-llm lm-eval --model megatron-llm --model_args checkpoint=RUN/checkpoints[,tensor=2,pipeline=2]
--tasks ...` (the harness's own command line with this class registered), `megatron-llm evaluate
--harness-tasks ...`, or `simple_evaluate(model=MegatronLM(...))` from Python. Under torchrun, every process
runs the harness on all requests with the same inputs (the class tells the harness it is one process):
data-parallel replicas split the work inside (`NativeModel`), model-parallel ranks work together, and
only rank 0 reports.
"""

from __future__ import annotations

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from megatron_llm.evaluation.generation import Request
from megatron_llm.evaluation.native import NativeModel

MODEL_NAME = "megatron-llm"


def _int(value: object, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError) as error:
        from megatron_llm.errors import UsageError

        raise UsageError(f"--model_args {name}={value!r}: expected an integer") from error


@register_model(MODEL_NAME)
class MegatronLM(LM):
    """Model arguments: `checkpoint` (root or iter_* directory), `tokenizer`, `tensor`, `pipeline`,
    `batch_size` (sequences per micro-batch and generation batch), `max_gen_toks` (default 256)."""

    def __init__(self, checkpoint: str | None = None, tokenizer: str | None = None, tensor: int = 1,
                 pipeline: int = 1, batch_size: int | str = 4, max_gen_toks: int = 256,
                 native: NativeModel | None = None, **_: object) -> None:
        super().__init__()
        batch = 4 if str(batch_size).startswith("auto") else _int(batch_size, "batch_size")
        if native is None:
            if checkpoint is None:
                from megatron_llm.errors import UsageError

                raise UsageError("--model_args: checkpoint=DIR is required")
            from megatron_llm.evaluation.loading import load_for_inference

            overrides = [f"parallel.tensor={_int(tensor, 'tensor')}", f"parallel.pipeline={_int(pipeline, 'pipeline')}"]
            native = NativeModel.from_loaded(load_for_inference(checkpoint, overrides, tokenizer, batch), batch)
        self.native = native
        self.batch_size = batch
        self.max_gen_toks = _int(max_gen_toks, "max_gen_toks")

    @property
    def tokenizer_name(self) -> str:
        return "megatron-llm"

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return self.native.loglikelihood([r.args for r in requests])

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        return self.native.loglikelihood_rolling([r.args[0] for r in requests])

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        converted = []
        for request in requests:
            context, kwargs = request.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            budget = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            sample = bool(kwargs.pop("do_sample", False))
            temperature = float(kwargs.pop("temperature", 0.0) or 0.0) if sample else 0.0
            prompt = self.native.encode(context) or [self.native.eod]
            prompt = prompt[-(self.native.max_length - budget):]
            converted.append(Request(prompt, budget, until, temperature, int(kwargs.pop("seed", 0) or 0)))
        return [g.text for g in self.native.generate(converted, self.batch_size)]
