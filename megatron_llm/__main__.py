"""`python -m megatron_llm ...` behaves like `megatron-llm ...` (so `torchrun -m megatron_llm train` works)."""

import sys

from megatron_llm.cli import main

if __name__ == "__main__":
    sys.exit(main())
