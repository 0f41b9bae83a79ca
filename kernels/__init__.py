"""Triton kernels (GPU only); installed as megatron_llm.kernels."""
