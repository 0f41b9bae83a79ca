"""The typed configuration: one dataclass per section, each module receives only the section it needs.

Every field carries a one-line attribute docstring (the string right below it): what it is, its unit, and
why its default is what it is. `megatron-llm config show` prints them and generates the README's reference
from them. A fixed set of choices is a `Literal[...]`: the YAML loader and validation read the allowed
values from it, so there is no second list to keep in step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class ModelConfig:
    """A Llama-style decoder: RoPE, GQA, RMSNorm, SwiGLU, no biases unless asked."""

    num_layers: int = 4
    """Transformer blocks; a multiple of parallel.pipeline x virtual_pipeline unless the split is uneven (4: tiny)."""

    hidden_size: int = 64
    """Width of the residual stream, the embedding dimension (64: the tiny CPU model)."""

    ffn_hidden_size: int = 176
    """Inner width of the SwiGLU MLP; Llama uses about 8/3 x hidden_size, rounded up (176 for 64)."""

    num_attention_heads: int = 4
    """Query heads; a multiple of parallel.tensor (each tensor-parallel rank owns whole heads)."""

    num_query_groups: int | None = None
    """Key/value heads for grouped-query attention; null = one per query head (plain multi-head attention)."""

    kv_channels: int | None = None
    """Dimension of one attention head; null = hidden_size / num_attention_heads."""

    vocab_size: int | None = None
    """Vocabulary size before padding; null = the tokenizer's (data.tokenizer), which then must be set."""

    make_vocab_size_divisible_by: int = 128
    """Pad embedding rows to a multiple of this x parallel.tensor (128: Megatron-LM's, GPU-friendly shapes)."""

    max_position_embeddings: int = 2048
    """Longest sequence, in tokens, the model is built for; data.seq_length may not exceed it."""

    rotary_base: float = 10000.0
    """RoPE theta (10000: Llama 1 and 2; Llama 3 uses 500000); megatron-core truncates it to an integer."""

    rope_scaling: Literal["llama3"] | None = None
    """RoPE frequency scaling for long context: llama3 (Llama 3.1's scheme) or null for none."""

    rope_scaling_factor: float = 8.0
    """Context-extension factor of llama3 scaling (8: Llama 3.1's); ignored without rope_scaling."""

    norm_epsilon: float = 1e-5
    """RMSNorm epsilon added to the mean square (1e-5: Llama 2 and 3)."""

    tie_embeddings: bool = False
    """Share the input embedding with the output projection (false: Llama keeps them separate)."""

    add_qkv_bias: bool = False
    """Biases on the query, key and value projections (true for Qwen2; false: Llama has no biases)."""

    qk_norm: bool = False
    """RMSNorm on each head's queries and keys before RoPE (Qwen3/OLMo-2 style), against loss spikes."""

    init_method_std: float = 0.02
    """Standard deviation of the normal weight initialisation (0.02: GPT-2's and Megatron-LM's)."""

    attention_dropout: float = 0.0
    """Dropout probability on the attention weights (0: LLM pre-training on fresh data uses none)."""

    hidden_dropout: float = 0.0
    """Dropout probability on each block's output before the residual add (0: as Llama)."""

    transformer_impl: Literal["auto", "local", "transformer_engine"] = "auto"
    """Layer kernels: auto = Transformer Engine when installed, else megatron-core's local (CPU) layers."""

    recompute: Literal["none", "selective", "full"] = "none"
    """Activation recomputation, trading compute for memory: selective = attention core, full = whole layers."""

    recompute_num_layers: int = 1
    """Layers recomputed as one unit under recompute: full (1: least memory)."""

    recompute_method: Literal["uniform", "block"] = "uniform"
    """Under recompute: full: uniform = all layers, recompute_num_layers per unit; block = only that many per chunk."""

    fused_linear_cross_entropy: bool = False
    """Output layer + loss in vocabulary chunks, never all logits (Triton on GPU, torch on CPU; false: plain)."""

    @property
    def query_groups(self) -> int:
        return self.num_query_groups or self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads


@dataclass
class PrecisionConfig:
    """Training precision; `fp8` selects Transformer Engine's recipe on Hopper GPUs."""

    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Parameter and compute dtype (fp32: exact and runs on CPU; bf16 on GPUs; fp16 needs CUDA)."""

    fp8: Literal["delayed", "current"] | None = None
    """FP8 matmuls with this scaling recipe (Transformer Engine, Hopper or newer); null = no FP8."""

    fp8_amax_history_len: int = 1024
    """Delayed scaling: steps of amax history kept per tensor (1024: Transformer Engine's default)."""

    fp8_amax_compute_algo: Literal["max", "most_recent"] = "max"
    """Delayed scaling: the scale follows the history's max or its most_recent amax (max: TE's default)."""

    fp8_param_gather: bool = False
    """FP8 primary weights: TE's linear weights kept and all-gathered in FP8, no 16-bit copy (distributed optimizer)."""

    grad_reduce_in_fp32: bool | None = None
    """Reduce bf16/fp16 gradients over data parallel in FP32 (null: yes on CPU, no on a GPU with TE, as the recipe)."""


@dataclass
class ParallelConfig:
    """How the model and batch are split over ranks; data parallel = world / (tensor x pipeline x context)."""

    tensor: int = 1
    """Tensor-parallel size: each layer's matrices split over this many ranks (keep it within a node)."""

    pipeline: int = 1
    """Pipeline-parallel size: consecutive blocks of layers on this many ranks."""

    virtual_pipeline: int | None = None
    """Model chunks per pipeline rank (the interleaved schedule, a smaller bubble); null = 1, no interleaving."""

    account_for_embedding: bool = False
    """Count the embedding as one layer when splitting layers over pipeline stages (the first stage holds one fewer)."""

    account_for_loss: bool = False
    """Count the output layer and loss as one layer when splitting over pipeline stages (the last holds one fewer)."""

    first_stage_layers: int | None = None
    """Transformer layers on the first pipeline stage (null: an even split); the other stages share the rest."""

    last_stage_layers: int | None = None
    """Transformer layers on the last pipeline stage (null: an even split); not combinable with account_for_*."""

    context: int = 1
    """Context-parallel size: each sequence split over this many ranks (needs Transformer Engine attention)."""

    sequence_parallel: bool = False
    """Shard norm and dropout activations along the sequence over the tensor-parallel group (needs tensor > 1)."""

    distributed_optimizer: bool = False
    """Shard optimizer state and fp32 master weights over data-parallel ranks, ZeRO-1 (off: plain DDP)."""

    overlap_grad_reduce: bool = True
    """Reduce gradients in buckets while the backward pass still runs (true: hides the communication)."""

    overlap_param_gather: bool | None = None
    """With distributed_optimizer, all-gather updated parameters during the next forward (null: on a GPU with TE)."""

    timeout_minutes: float = 30.0
    """Minutes a collective waits for a lost peer before failing (30: outlasts a large checkpoint save)."""


@dataclass
class WSDConfig:
    """Warmup-stable-decay: after warmup the learning rate holds at lr, then decays to min_lr at the end."""

    decay_iters: int | None = None
    """Steps of the final decay; null: optim.wsd.decay_fraction of the decay length."""

    decay_fraction: float = 0.1
    """Fraction of the decay length (optim.lr_decay_iters or the run) spent decaying (0.1: MiniCPM's)."""

    decay_style: Literal["linear", "cosine", "1-sqrt", "exponential"] = "1-sqrt"
    """Shape of the final decay (1-sqrt: the shape Hägele et al. 2024 found best for WSD)."""


@dataclass
class OptimConfig:
    """AdamW with linear warmup and a decay to `min_lr` (megatron-core's OptimizerParamScheduler)."""

    lr: float = 3e-4
    """Peak learning rate, reached at the end of warmup (3e-4: Llama's for its 7B and 13B models)."""

    min_lr: float = 3e-5
    """Learning rate at the end of the decay (3e-5: a tenth of the peak, as Llama)."""

    weight_decay: float = 0.1
    """Decoupled AdamW weight decay (0.1: Llama's)."""

    adam_beta1: float = 0.9
    """AdamW first-moment decay rate (0.9: Llama's)."""

    adam_beta2: float = 0.95
    """AdamW second-moment decay rate (0.95: Llama's, steadier than PyTorch's 0.999 for LLMs)."""

    adam_eps: float = 1e-8
    """AdamW epsilon added to the denominator (1e-8: PyTorch's and Megatron-LM's default)."""

    clip_grad: float = 1.0
    """Clip the global gradient L2 norm to this (1.0: Llama's); 0 turns clipping off."""

    warmup_iters: int = 0
    """Optimizer steps of linear warmup from 0 to lr (0: none, enough for the tiny default model)."""

    lr_schedule: Literal["cosine", "linear", "constant", "inverse_sqrt", "wsd"] = "cosine"
    """Learning rate after warmup: decays to min_lr (cosine, linear, inverse_sqrt), holds (constant) or wsd."""

    wsd: WSDConfig = field(default_factory=lambda: WSDConfig())
    """The decay phase of the wsd schedule (read only when optim.lr_schedule is wsd)."""

    lr_decay_iters: int | None = None
    """Steps from the start to the end of the decay; null = the whole run (schedule.train_iters or tokens)."""

    z_loss: float = 0.0
    """Coefficient of the z-loss, coef x logsumexp(logits)^2 per token, added to the loss (1e-4: PaLM's; 0: off)."""


@dataclass
class BatchRampConfig:
    """Batch-size ramp-up as Megatron-LM's --rampup-batch-size: start small, grow in steps to the full batch."""

    start: int = 32
    """Global batch size (samples) of the first steps."""

    increment: int = 32
    """Samples added to the global batch size at each increase; (global batch - start) must divide by it."""

    samples: int = 1_000_000
    """Consumed samples over which the batch grows from start to schedule.global_batch_size."""


@dataclass
class ScheduleConfig:
    """How long to train, in which batches, when to evaluate, and when to stop or give up."""

    train_iters: int | None = None
    """Optimizer steps to train; this or train_tokens is required (null: no length a default would suit)."""

    train_tokens: int | None = None
    """Tokens to train on instead, rounded up to whole global batches; train_iters wins when both are set."""

    global_batch_size: int = 8
    """Sequences per optimizer step over all data-parallel ranks; micro-batches accumulate up to it."""

    micro_batch_size: int = 2
    """Sequences per forward and backward pass on one rank (small: bounds activation memory)."""

    batch_ramp: BatchRampConfig | None = None
    """Ramp the global batch size up from a smaller start (see schedule.batch_ramp.*); null: constant."""

    stages: list = field(default_factory=list)
    """Staged run: [{name, start_step (steps done before it) or start_tokens, paths, lr_schedule, lr, ...}]."""

    eval_interval: int | None = None
    """Evaluate every N steps as well as at the end; null = only at the end."""

    eval_iters: int = 2
    """Global batches of the validation split per evaluation (2: a cheap check for the tiny model)."""

    exit_interval: int | None = None
    """Stop this process after N steps, with a checkpoint, without changing the schedule; null = never."""

    exit_duration_minutes: float | None = None
    """Wall-clock minutes after which to save and exit 75 for a requeue (a bit under the job's limit); null = none."""

    seed: int = 1234
    """Seeds initialisation, dropout and data order: the same seed and layout give the same run."""

    manual_gc_interval: int | None = None
    """Turn Python's automatic garbage collector off and collect every N steps on every rank (null: automatic GC)."""

    max_skipped_in_a_row: int = 10
    """Abort (exit 3) after this many steps in a row with a non-finite loss or gradient norm; 0 = never."""

    loss_spike_sigma: float | None = None
    """Roll back to the last checkpoint when loss > window mean + sigma x std; null = no spike guard."""

    loss_spike_window: int = 20
    """Recent steps whose loss mean and standard deviation the spike guard compares against."""


@dataclass
class DataConfig:
    """Token shards, a blend of them (`[0.7, prefixA, 0.3, prefixB]`), or a seeded synthetic stream."""

    paths: list = field(default_factory=list)
    """Shard prefixes: [prefix], or a weighted blend [0.7, prefixA, 0.3, prefixB]; empty needs synthetic."""

    split: str = "969,30,1"
    """Train, validation and test proportions of every dataset (969,30,1: Megatron-LM's default)."""

    seq_length: int = 128
    """Tokens per training sequence; at most model.max_position_embeddings (128: cheap on CPU)."""

    tokenizer: str | None = None
    """Tokenizer directory written by train-tokenizer (gives the vocabulary and EOD id); null = none."""

    synthetic: bool = False
    """With empty paths, train on a seeded synthetic token stream (false: empty paths stay an error)."""

    cache_dir: str | None = None
    """Where megatron-core caches the dataset sample indices; null = a cache/ folder next to the shards."""

    num_workers: int = 0
    """Data-loader worker processes; not read yet: batches are built in the training process."""

    eod_mask_loss: bool = False
    """No loss where the input token is EOD, i.e. on guessing the next document's start (false: Megatron-LM's)."""

    document_mask: bool = False
    """Keep packed documents apart: position ids restart and attention stops at every EOD (false: Megatron-LM's)."""


@dataclass
class CheckpointConfig:
    """Where and how often to save, which checkpoints to keep, and what preemption and corruption do."""

    dir: str | None = None
    """Checkpoint root directory; null = RUN_DIR/checkpoints."""

    save_interval: int | None = None
    """Save every N steps; the last step, exit_interval and exit signals always save; null = only those."""

    keep_last: int | None = None
    """Keep the newest K complete checkpoints (and keep_every's); null with keep_every null = keep all."""

    keep_every: int | None = None
    """Also keep every checkpoint whose step is a multiple of M; null = no such extra ones."""

    async_save: bool = False
    """Write checkpoints in the background while training goes on (false: simpler, nothing in flight)."""

    mirror: str | None = None
    """Copy each checkpoint to s3://bucket/prefix, gs://..., or a directory, verified, pruned alike; null = none."""

    fallback_on_corruption: bool = False
    """Load the previous complete checkpoint when the latest fails verification (false: stop and say so)."""

    exit_signals: list = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])
    """Signals on which every rank saves and exits 75 (SIGUSR1: the sbatch template's --signal)."""


@dataclass
class WandbConfig:
    """A Weights & Biases run (pip install 'megatron-llm[wandb]'); rank 0 logs what metrics.jsonl gets."""

    project: str = "megatron-llm"
    """W&B project the run belongs to."""

    entity: str | None = None
    """W&B team or user; null = the logged-in account's default entity."""

    name: str | None = None
    """Display name of the run; null = the run directory's name."""

    mode: Literal["online", "offline"] = "online"
    """online streams to the W&B server; offline writes RUN_DIR/wandb/ for a later `wandb sync`."""


@dataclass
class MlflowConfig:
    """An MLflow run (pip install 'megatron-llm[mlflow]'); rank 0 logs what metrics.jsonl gets."""

    tracking_uri: str | None = None
    """MLflow tracking server or store URI (http://host:5000, sqlite:///mlflow.db); null = MLFLOW_TRACKING_URI."""

    experiment: str = "megatron-llm"
    """Experiment the run is filed under (created when missing)."""

    run_name: str | None = None
    """Display name of the run; null = the run directory's name."""


@dataclass
class LoggingConfig:
    """What a run reports: metrics.jsonl lines, TensorBoard events, trackers, MFU and the progress bar."""

    log_interval: int = 1
    """Steps between metrics lines and TensorBoard points (1: every step, cheap next to a step)."""

    tensorboard: bool = True
    """Also write TensorBoard event files to RUN_DIR/tensorboard."""

    peak_tflops_per_device: float | None = None
    """Peak dense TFLOP/s of one device, for MFU (989 for an H100 SXM in bf16); null = no MFU."""

    progress: bool = True
    """Show a progress bar on rank 0 (when stdout is not a terminal: one plain line per log_interval)."""

    wandb: WandbConfig | None = None
    """Also log to Weights & Biases: a mapping {project, entity, name, mode: online|offline}; null = no W&B."""

    mlflow: MlflowConfig | None = None
    """Also log to MLflow: a mapping {tracking_uri, experiment, run_name}; null = no MLflow."""

    norms_interval: int | None = None
    """Steps between per-layer-group gradient and parameter norms (costs a reduction); null = never."""

    system_metrics: bool = True
    """Log GPU utilisation, memory and power (NVML) or CPU RSS and utilisation, min/mean/max over ranks."""


@dataclass
class EvaluationConfig:
    """Benchmarks run during training on the training ranks (no export); see evaluation/benchmark_runner.py."""

    tasks: list = field(default_factory=list)
    """[{task, data, every}, ...], e.g. {task: arc, data: DIR, every: 500}; optional limit, num_fewshot, split."""


@dataclass
class Config:
    """A whole run: one YAML mapping per section."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The network: a Llama-style decoder (RoPE, grouped-query attention, RMSNorm, SwiGLU)."""

    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    """Number formats of parameters and matmuls."""

    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """The parallel layout; data parallel = world size / (tensor x pipeline x context)."""

    optim: OptimConfig = field(default_factory=OptimConfig)
    """AdamW and the learning-rate schedule (linear warmup, then a decay to min_lr)."""

    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Run length, batch sizes, evaluation, early exits and bad-step handling."""

    data: DataConfig = field(default_factory=DataConfig)
    """Training data: token shards, a weighted blend of them, or a seeded synthetic stream."""

    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Saving, retention, mirroring, preemption signals and corrupt-checkpoint fallback."""

    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Metrics, TensorBoard, MFU and the progress bar."""

    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    """Benchmarks at intervals during training, logged to every metrics writer; never changes training."""
