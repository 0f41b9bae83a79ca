"""Our model behind the three questions benchmarks ask: log-likelihood of a continuation, of a whole text
(rolling windows), and a generated continuation. The harness adapter, the benchmark runner and evaluation
during training all go through it; every rank of the model's process group calls it with the same inputs.

Text is split into tokens as lm-evaluation-harness's `hf` model splits it, so that the numbers agree with the
exported model's: trailing spaces of a context move to its continuation, the continuation's tokens are what
the encoding of context+continuation has beyond the context's length, an empty context becomes the
end-of-document token, and inputs longer than the model's positions keep their last tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_llm.evaluation.generation import Generated, Request, generate_all
from megatron_llm.evaluation.scoring import pad_sequence, score_samples

CHUNK = 256  # samples per scoring call: sorted by length, each call padded to its own longest


@dataclass
class NativeModel:
    model: list  # model chunks (this rank's pipeline stages)
    tokenizer: object
    vocab: int  # the exported vocabulary: logits beyond it (padding rows) are ignored
    max_length: int  # positions
    micro_batch_size: int = 4

    @classmethod
    def from_loaded(cls, loaded, micro_batch_size: int = 4) -> NativeModel:
        vocab = loaded.config.model.vocab_size or loaded.tokenizer.vocab_size
        return cls(loaded.model, loaded.tokenizer, vocab, loaded.config.model.max_position_embeddings,
                   micro_batch_size)

    @property
    def eod(self) -> int:
        return self.tokenizer.eod_id

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text)) if text else []

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if not context:
            return [self.eod], self.encode(continuation)
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.encode(context + continuation)
        cut = len(self.encode(context))
        return whole[:cut], whole[cut:]

    def score_tokens(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(summed log-probability of the continuation tokens, were they all greedy) per (context, continuation)."""
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        out: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
        for start in range(0, len(order), CHUNK):
            chosen = order[start:start + CHUNK]
            sequences = []
            for i in chosen:
                context, continuation = pairs[i]
                ids = (context + continuation)[-(self.max_length + 1):]
                scored = min(len(continuation), len(ids) - 1)
                sequences.append((ids, [False] * (len(ids) - scored) + [True] * scored))
            seq = max(len(ids) - 1 for ids, _ in sequences)
            samples = [pad_sequence(ids, mask, seq, self.eod) for ids, mask in sequences]
            result = score_samples(self.model, samples, seq, self.micro_batch_size, vocab=self.vocab)
            for k, i in enumerate(chosen):
                out[i] = (float(result.logprob[k]), bool(result.greedy[k] > 0.5))
        return out

    def loglikelihood(self, pairs: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        return self.score_tokens([self.encode_pair(c, x) for c, x in pairs])

    def loglikelihood_rolling(self, texts: list[str]) -> list[float]:
        pieces, owner = [], []
        for k, text in enumerate(texts):
            for window in self._windows(text):
                pieces.append(window)
                owner.append(k)
        totals = [0.0] * len(texts)
        for k, (logprob, _) in zip(owner, self.score_tokens(pieces)):
            totals[k] += logprob
        return totals

    def _windows(self, text: str) -> list[tuple[list[int], list[int]]]:
        """(context, targets) windows: targets are consecutive runs of up to `max_length` tokens, and the
        context is what precedes them (starting with the end-of-document token) so that context + targets is
        at most `max_length + 1` tokens."""
        tokens = self.encode(text)
        stream = [self.eod] + tokens
        out = []
        for start in range(0, len(tokens), self.max_length):
            end = min(start + self.max_length, len(tokens))
            first = max(end + 1 - (self.max_length + 1), 0)
            out.append((stream[first:start + 1], stream[start + 1:end + 1]))
        return out

    def generate(self, requests: list[Request], batch_size: int) -> list[Generated]:
        return generate_all(self.model, requests, self.decode, self.eod, self.vocab, self.max_length, batch_size)
