"""Peak memory of the output layer + loss: megatron-core's path against the chunked fused linear cross-entropy.

    python benchmarks/fused_ce_memory.py [--tokens 1024] [--hidden 512] [--vocab 128256] [--chunk-elements N]

Each variant runs forward and backward once in a fresh process (CPU, fp32) on the same inputs; the peak
resident memory above what the inputs already hold is the variant's working memory. Plain: the output
layer's logits ([tokens, vocab]) and megatron-core's vocab_parallel_cross_entropy on them, what the model
does with model.fused_linear_cross_entropy off. Chunked: megatron_llm.kernels' torch path (the one CPU
training uses with the option on; the Triton kernels chunk the same way). Also prints the analytic size of
one full logits tensor and of one chunk, and checks that both variants give the same loss.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys

MIB = 2**20


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _measure(variant: str, tokens: int, hidden_size: int, vocab: int, chunk_elements: int) -> dict:
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(tokens, hidden_size, generator=g).requires_grad_()
    weight = (0.02 * torch.randn(vocab, hidden_size, generator=g)).requires_grad_()
    target = torch.randint(0, vocab, (tokens,), generator=g)
    if variant == "plain":
        from megatron.core import tensor_parallel

        from megatron_llm.config.schema import ParallelConfig
        from megatron_llm.runtime.distributed import init_distributed

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(s.getsockname()[1]))
        init_distributed(ParallelConfig())

        def loss_fn():
            logits = hidden @ weight.t()
            return tensor_parallel.vocab_parallel_cross_entropy(logits[:, None], target[:, None])[:, 0]
    else:
        from megatron_llm.kernels.fused_linear_cross_entropy import fused_linear_cross_entropy

        def loss_fn():
            return fused_linear_cross_entropy(hidden, weight, target, chunk_elements=chunk_elements, backend="torch")
    baseline = _rss()
    loss = loss_fn()
    loss.sum().backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"variant": variant, "working_bytes": peak - baseline, "loss": float(loss.double().sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=128256, help="vocabulary rows of this rank (128256: Llama 3)")
    parser.add_argument("--chunk-elements", type=int, default=1 << 24, help="logits per chunk (default 16M)")
    parser.add_argument("--variant", choices=["plain", "chunked"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(_measure(args.variant, args.tokens, args.hidden, args.vocab, args.chunk_elements)))
        return
    results = {}
    for variant in ("plain", "chunked"):
        command = [sys.executable, __file__, "--variant", variant, "--tokens", str(args.tokens), "--hidden",
                   str(args.hidden), "--vocab", str(args.vocab), "--chunk-elements", str(args.chunk_elements)]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
    from megatron_llm.kernels.chunking import chunk_ranges, working_bytes

    widths = [end - start for start, end in chunk_ranges(args.vocab, args.tokens, args.chunk_elements)]
    logits_mib = args.tokens * args.vocab * 4 / MIB
    plain, chunked = results["plain"]["working_bytes"] / MIB, results["chunked"]["working_bytes"] / MIB
    print(f"shape: {args.tokens} tokens x hidden {args.hidden} x vocabulary {args.vocab}, fp32, CPU, forward+backward")
    print(f"one full fp32 logits tensor: {logits_mib:8.1f} MiB; one chunk ({widths[0]} columns, {len(widths)} "
          f"chunks): {args.tokens * widths[0] * 4 / MIB:.1f} MiB")
    print(f"plain (output layer + megatron-core CE): peak working memory {plain:8.1f} MiB")
    print(f"chunked fused linear cross-entropy:      peak working memory {chunked:8.1f} MiB")
    grad_mib = args.vocab * args.hidden * 4 / MIB
    print(f"saved: {plain - chunked:.1f} MiB; both include the weight gradient ({grad_mib:.1f} MiB), without it "
          f"{plain - grad_mib:.1f} against {chunked - grad_mib:.1f} MiB "
          f"({(plain - grad_mib) / max(chunked - grad_mib, 1e-9):.1f}x less)")
    planned = working_bytes(args.tokens, args.vocab, args.hidden, 4, triton=False,
                            chunk_elements=args.chunk_elements) / MIB
    print(f"plan's count for the chunked path (torch, without the weight gradient): {planned:.1f} MiB")
    difference = abs(results["plain"]["loss"] - results["chunked"]["loss"]) / abs(results["plain"]["loss"])
    print(f"loss sums agree to {difference:.1e} (relative)")


if __name__ == "__main__":
    main()
