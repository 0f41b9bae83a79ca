"""The typed configuration: one dataclass per section, each module receives only the section it needs."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ModelConfig:
    """A Llama-style decoder: RoPE, GQA, RMSNorm, SwiGLU, no biases unless asked."""

    num_layers: int = 4
    hidden_size: int = 64
    ffn_hidden_size: int = 176
    num_attention_heads: int = 4
    num_query_groups: int | None = None
    kv_channels: int | None = None
    vocab_size: int | None = None
    make_vocab_size_divisible_by: int = 128
    max_position_embeddings: int = 2048
    rotary_base: float = 10000.0
    rope_scaling: str | None = None
    rope_scaling_factor: float = 8.0
    norm_epsilon: float = 1e-5
    tie_embeddings: bool = False
    add_qkv_bias: bool = False
    init_method_std: float = 0.02
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    transformer_impl: str = "auto"
    recompute: str = "none"
    recompute_num_layers: int = 1

    @property
    def query_groups(self) -> int:
        return self.num_query_groups or self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads


@dataclass
class PrecisionConfig:
    """Training precision; `fp8` selects Transformer Engine's recipe on Hopper GPUs."""

    dtype: str = "fp32"
    fp8: str | None = None
    fp8_amax_history_len: int = 1024
    fp8_amax_compute_algo: str = "max"


@dataclass
class ParallelConfig:
    tensor: int = 1
    pipeline: int = 1
    virtual_pipeline: int | None = None
    context: int = 1
    sequence_parallel: bool = False
    distributed_optimizer: bool = False
    overlap_grad_reduce: bool = True
    overlap_param_gather: bool = False


@dataclass
class OptimConfig:
    """AdamW with linear warmup and a decay to `min_lr` (megatron-core's OptimizerParamScheduler)."""

    lr: float = 3e-4
    min_lr: float = 3e-5
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    warmup_iters: int = 0
    decay_style: str = "cosine"
    lr_decay_iters: int | None = None


@dataclass
class ScheduleConfig:
    train_iters: int | None = None
    train_tokens: int | None = None
    global_batch_size: int = 8
    micro_batch_size: int = 2
    eval_interval: int | None = None
    eval_iters: int = 2
    exit_interval: int | None = None
    seed: int = 1234
    max_skipped_in_a_row: int = 10
    loss_spike_sigma: float | None = None
    loss_spike_window: int = 20


@dataclass
class DataConfig:
    """Token shards, a blend of them (`[0.7, prefixA, 0.3, prefixB]`), or a seeded synthetic stream."""

    paths: list = field(default_factory=list)
    split: str = "969,30,1"
    seq_length: int = 128
    tokenizer: str | None = None
    synthetic: bool = False
    cache_dir: str | None = None
    num_workers: int = 0
    eod_mask_loss: bool = False


@dataclass
class CheckpointConfig:
    dir: str | None = None
    save_interval: int | None = None
    keep_last: int | None = None
    keep_every: int | None = None
    async_save: bool = False
    mirror_dir: str | None = None
    fallback_on_corruption: bool = False
    exit_signals: list = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])


@dataclass
class LoggingConfig:
    log_interval: int = 1
    tensorboard: bool = True
    peak_tflops_per_device: float | None = None
    progress: bool = True


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
