"""megatron-llm: an engine for training large language models from scratch on megatron-core."""

import warnings

__version__ = "0.1.0"

# megatron-core announces its fallbacks at import time; megatron-llm chooses the implementation itself
# (Transformer Engine on GPUs that have it, megatron-core's local modules otherwise), so these notices
# are not actionable for our users.
for _message in (
    r".*Transformer Engine and Apex are not installed.*",
    r".*Apex is not installed.*",
    r".*full scope is deprecated.*",
    r".*imports from `dynamic_context.py` will be removed.*",
):
    warnings.filterwarnings("ignore", message=_message)
