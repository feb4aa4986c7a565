"""Typed config schemas: the single definition of every field, its default and its meaning.

Each Hydra config group under ``conf/`` extends one of these dataclasses (registered with Hydra's
ConfigStore as ``schema_<group>``), so an unknown field or a wrongly typed value is rejected at
composition time. Range and choice checks live in ``__post_init__`` and run when a composed config
is turned into objects with :func:`to_trial_config`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from lora_lab import names
from lora_lab.errors import ConfigError


def _check_choice(name: str, value: Any, choices: list[Any] | tuple[Any, ...]) -> None:
    if value not in choices:
        raise ConfigError(name, value, "one of " + ", ".join(repr(c) for c in choices))


def _check_range(
    name: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
    ok = not (isinstance(value, float) and math.isnan(value))
    if ok and low is not None:
        ok = value >= low if low_inclusive else value > low
    if ok and high is not None:
        ok = value <= high if high_inclusive else value < high
    if not ok:
        lo = "" if low is None else f"{low} {'<=' if low_inclusive else '<'} "
        hi = "" if high is None else f" {'<=' if high_inclusive else '<'} {high}"
        raise ConfigError(name, value, f"a number with {lo}{name.rsplit('.', 1)[-1]}{hi}")


STUDY_NAME = re.compile(r"[A-Za-z0-9_.-]+")
"""A study name is one path segment (it names sweeps/<study>/ and reports/<study>/)."""


def _check_study_name(name: str, value: Any) -> None:
    if not isinstance(value, str) or not STUDY_NAME.fullmatch(value) or ".." in value or value == ".":
        raise ConfigError(
            name,
            value,
            "one path segment of letters, digits and - _ . (no '/', no '..'): it names the folders "
            "sweeps/<name>/ and reports/<name>/, which must stay inside them",
        )


@dataclass
class ModelConfig:
    """Which base model to adapt: the built-in tiny Llama or a Hugging Face Hub model."""

    name: str = "tiny_llama"
    """Short label used in run names and reports."""
    source: str = "package"
    """'package': a model shipped inside lora_lab (``lora_lab/assets/<pretrained>/``, loaded offline
    with ``from_pretrained``); 'builtin': a Llama-architecture model built from the fields below with
    seeded random weights (the from-scratch control); 'hub': ``pretrained`` is a Hub id or a local
    directory loaded with ``from_pretrained``."""
    pretrained: Optional[str] = "tiny_llama"
    """package: the asset's name (``tiny_llama``); hub: a Hub id (e.g. 'Qwen/Qwen2.5-0.5B') or a
    local path."""
    revision: Optional[str] = None
    """Hub revision (branch, tag or commit) to pin."""
    trust_remote_code: bool = False
    """Allow model code from the Hub to run; off unless set on purpose."""
    dtype: str = "auto"
    """Weights dtype when not quantized: 'auto' (bf16 on a CUDA device that supports it, else
    fp32), 'float32', 'bfloat16' or 'float16'."""
    hidden_size: int = 64
    """Built-in model: width of the residual stream."""
    intermediate_size: int = 128
    """Built-in model: width of the MLP."""
    num_hidden_layers: int = 2
    """Built-in model: number of decoder layers."""
    num_attention_heads: int = 4
    """Built-in model: attention heads."""
    num_key_value_heads: int = 2
    """Built-in model: key/value heads (grouped-query attention when fewer than the heads)."""
    max_position_embeddings: int = 128
    """Built-in model: longest sequence the rotary embedding is set up for."""
    initializer_range: float = 0.1
    """Built-in model: std of the random weights. Wider than transformers' 0.02 so the frozen output
    head can express confident predictions (with 0.02 the logits of a 64-wide model stay within
    about +-1.3, which caps how low the loss can go whatever the adapter learns)."""
    init_seed: int = 0
    """Built-in model: seed of the random weights, so every run adapts the same base model."""
    target_sets: dict[str, list[str]] = field(default_factory=dict)
    """Target-module sets of your own, by name, e.g. {ko: [k_proj, o_proj]} (module-name suffixes);
    a name here also replaces the set of that name that lora_lab derives from the model's layers
    (qv, attn, mlp, all_linear: see docs/bring-your-own.md)."""

    def __post_init__(self) -> None:
        _check_choice("model.source", self.source, ("package", "builtin", "hub"))
        _check_choice("model.dtype", self.dtype, ("auto", "float32", "bfloat16", "float16"))
        if self.source == "hub" and not self.pretrained:
            raise ConfigError(
                "model.pretrained", self.pretrained, "a Hub model id or a local directory when model.source='hub'"
            )
        if self.source == "package" and not self.pretrained:
            raise ConfigError(
                "model.pretrained",
                self.pretrained,
                "the name of a model shipped in lora_lab/assets/ (tiny_llama) when model.source='package'",
            )
        for name in (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
        ):
            _check_range(f"model.{name}", getattr(self, name), low=1)
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                "model.num_attention_heads",
                self.num_attention_heads,
                f"a divisor of model.hidden_size={self.hidden_size}",
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                "model.num_key_value_heads",
                self.num_key_value_heads,
                f"a divisor of model.num_attention_heads={self.num_attention_heads}",
            )


INIT_LORA_WEIGHTS = ("true", "false", "gaussian", "pissa", "olora")
"""The adapter initialisations lora.init_lora_weights accepts."""
BASE_REWRITING_INITS = ("pissa", "olora")
"""Initialisations that rewrite the base weights (they move the adapter's start out of them)."""
LOFTQ_REFUSAL = (
    "one of " + ", ".join(repr(c) for c in INIT_LORA_WEIGHTS) + " ('loftq' is not supported: "
    "PEFT's LoftQ needs a full-precision base that it quantizes itself with a LoftQConfig, "
    "which the quant group does not describe; for QLoRA use quant=nf4 with "
    "lora.init_lora_weights=true)"
)
METHODS = ("lora", "full", "none")
"""lora.method values: an adapter, or one of the two baselines (full fine-tuning, zero-shot)."""


@dataclass
class LoraSettings:
    """LoRA adapter settings; each maps onto one field of PEFT's ``LoraConfig``."""

    method: str = "lora"
    """What a trial trains: 'lora' (an adapter, the fields below), 'full' (the full fine-tuning
    baseline: every base weight trainable, the same steps; give it its own train.learning_rate) or
    'none' (the zero-shot baseline: the base model evaluated as it is, nothing trained)."""
    r: int = 8
    """Rank of the update B @ A."""
    lora_alpha: float = 16.0
    """Scale numerator: the update is multiplied by lora_alpha / r (or / sqrt(r) with rsLoRA)."""
    lora_dropout: float = 0.0
    """Dropout on the adapter's input, in [0, 1)."""
    bias: str = "none"
    """Which biases to train: 'none', 'all' or 'lora_only'."""
    targets: str = "all_linear"
    """Target modules: 'qv' (query and value projections), 'attn' (every attention layer), 'mlp' (the
    feed-forward layers), 'all_linear' (every linear layer but the output head), resolved from the
    model's own layers; or a set named in model.target_sets."""
    target_modules: Optional[list[str]] = None
    """Explicit module names; when set, replaces ``targets``."""
    use_rslora: bool = False
    """Rank-stabilised scaling lora_alpha / sqrt(r)."""
    use_dora: bool = False
    """Weight-decomposed LoRA (DoRA)."""
    init_lora_weights: str = "true"
    """A's initialisation: 'true' (Kaiming, B=0), 'gaussian', 'pissa', 'olora' or 'false' (random
    B: the adapter is not a no-op at step 0; for tests of the adapter itself). pissa and olora
    rewrite the base weights they start from, so such a trial adapts its own copy of the base
    (unquantized bases only); 'loftq' is refused (see ``LOFTQ_REFUSAL``)."""

    def __post_init__(self) -> None:
        _check_choice("lora.method", self.method, METHODS)
        _check_range("lora.r", self.r, low=1)
        _check_range("lora.lora_alpha", self.lora_alpha, low=0, low_inclusive=False)
        _check_range("lora.lora_dropout", self.lora_dropout, low=0, high=1, high_inclusive=False)
        _check_choice("lora.bias", self.bias, ("none", "all", "lora_only"))
        # an unquoted true/false on the command line arrives as 'True'/'False'
        self.init_lora_weights = str(self.init_lora_weights).lower()
        if self.init_lora_weights == "loftq":
            raise ConfigError("lora.init_lora_weights", "loftq", LOFTQ_REFUSAL)
        _check_choice("lora.init_lora_weights", self.init_lora_weights, INIT_LORA_WEIGHTS)
        if self.target_modules is not None and not self.target_modules:
            raise ConfigError(
                "lora.target_modules",
                self.target_modules,
                "a non-empty list of module names, or null to use lora.targets",
            )


@dataclass
class QuantConfig:
    """Base-model quantization through bitsandbytes (QLoRA when method='nf4')."""

    method: str = "none"
    """'none', 'int8' (LLM.int8), 'nf4' (QLoRA) or 'fp4'."""
    double_quant: bool = True
    """4-bit only: quantize the quantization constants too (QLoRA's double quantization)."""
    compute_dtype: str = "auto"
    """4-bit only: dtype of the de-quantized matmul: 'auto' (bf16 on CUDA when supported, else fp32),
    'float32', 'bfloat16' or 'float16'."""
    gradient_checkpointing: bool = False
    """Passed to PEFT's prepare_model_for_kbit_training for quantized models."""

    def __post_init__(self) -> None:
        _check_choice("quant.method", self.method, ("none", "int8", "nf4", "fp4"))
        _check_choice("quant.compute_dtype", self.compute_dtype, ("auto", "float32", "bfloat16", "float16"))


@dataclass
class TrainConfig:
    """Optimisation and evaluation schedule, handed to transformers' ``TrainingArguments``."""

    learning_rate: float = 5e-3
    """Peak learning rate of AdamW."""
    max_steps: Optional[int] = 60
    """Optimizer steps (>= 1); null lets ``epochs`` decide the length instead."""
    epochs: float = 1.0
    """Passes over the training set, used only when max_steps is null."""
    batch_size: int = 32
    """Sequences per device per forward pass."""
    gradient_accumulation_steps: int = 1
    """Forward passes per optimizer step."""
    warmup_ratio: float = 0.05
    """Share of the steps spent warming the learning rate up from zero."""
    lr_scheduler: str = "cosine"
    """A transformers scheduler name: linear, cosine, constant, constant_with_warmup, ..."""
    weight_decay: float = 0.0
    """AdamW weight decay on the adapter weights."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    max_seq_len: int = 64
    """Longer examples are truncated to this many tokens."""
    eval_every: int = 6
    """Evaluate on the held-out split every this many steps (these evaluations feed pruning)."""
    logging_steps: int = 6
    """Log the training loss every this many steps."""
    eval_generate: int = 64
    """Held-out prompts answered by greedy generation for the exact-match metric (0 skips it)."""
    seed: int = 0
    """Seed of the adapter initialisation, data order and dropout."""
    precision: str = "auto"
    """'auto' (bf16 on CUDA where supported, else fp32), 'fp32', 'bf16' or 'fp16'."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    save_adapter: bool = True
    """Save the trained adapter in PEFT's format under the run directory."""

    def __post_init__(self) -> None:
        _check_range("train.learning_rate", self.learning_rate, low=0, low_inclusive=False)
        _check_range("train.batch_size", self.batch_size, low=1)
        _check_range("train.gradient_accumulation_steps", self.gradient_accumulation_steps, low=1)
        _check_range("train.warmup_ratio", self.warmup_ratio, low=0, high=1, high_inclusive=False)
        _check_range("train.weight_decay", self.weight_decay, low=0)
        _check_range("train.max_seq_len", self.max_seq_len, low=4)
        _check_range("train.eval_every", self.eval_every, low=1)
        _check_range("train.logging_steps", self.logging_steps, low=1)
        _check_range("train.eval_generate", self.eval_generate, low=0)
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(
                "train.max_steps",
                self.max_steps,
                "a whole number of optimizer steps >= 1, or null to train for train.epochs",
            )
        if self.max_steps is None:
            _check_range("train.epochs", self.epochs, low=0, low_inclusive=False)
        _check_choice("train.precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        _check_choice(
            "train.lr_scheduler",
            self.lr_scheduler,
            (
                "linear",
                "cosine",
                "cosine_with_restarts",
                "polynomial",
                "constant",
                "constant_with_warmup",
                "inverse_sqrt",
            ),
        )


SYNTHETIC_TASKS = ("cipher_swap", "cipher_family", "cipher", "reverse", "add")
"""The built-in generated tasks (data.task values that need no file or download)."""


@dataclass
class DataConfig:
    """Where examples come from: a built-in synthetic task, a local JSONL file, or a Hub or local
    dataset; records are prompt/response pairs or chat conversations (``format``)."""

    task: str = "cipher_swap"
    """'cipher_swap' (task B: one key of the cipher family with ``swaps`` letter pairs exchanged, the
    default fine-tuning task of the pretrained tiny_llama), 'cipher_family' (task A: words through one
    of ``n_keys`` letter permutations, chosen by a key tag; what tiny_llama was pretrained on),
    'cipher' (a word through a fixed letter permutation), 'reverse' (spell a word backwards),
    'add' (sum of two numbers), 'jsonl' (``path``) or 'hf' (``hf_name``)."""
    n_train: int = 2000
    """Synthetic tasks: training examples."""
    n_eval: int = 200
    """Synthetic tasks: held-out examples (disjoint from training)."""
    seed: int = 1234
    """Synthetic tasks: seed of the generator, the cipher key and the split."""
    min_len: int = 6
    """Synthetic tasks: shortest word (or number of digits for 'add')."""
    max_len: int = 6
    """Synthetic tasks: longest word (or number of digits for 'add')."""
    n_keys: int = 4
    """cipher_family/cipher_swap: keys of the pretraining family (task A); tag i prefixes key i's prompts."""
    family_seed: int = 7
    """cipher_family/cipher_swap: seed of the family's keys and of task A's words (the same seed the
    shipped tiny_llama was pretrained with, so held-out task A is held out from its pretraining)."""
    key_index: int = 0
    """cipher_swap: which key of the family task B changes (its tag is kept)."""
    swaps: int = 6
    """cipher_swap: letter pairs whose cipher letters are exchanged: the designed size of the change,
    2 x swaps of the 26 letters map differently from the pretrained key."""
    path: Optional[str] = None
    """jsonl: training file, one JSON object per line."""
    eval_path: Optional[str] = None
    """jsonl: held-out file; when null, ``eval_fraction`` of ``path`` is held out."""
    eval_fraction: float = 0.1
    """jsonl/hf: share held out when no separate eval file or split is given."""
    prompt_field: str = "prompt"
    """jsonl/hf: field holding the prompt."""
    response_field: str = "response"
    """jsonl/hf: field holding the response (the loss is computed on it alone)."""
    prompt_template: str = "{prompt}"
    """jsonl/hf: format string applied to each record; may name any field, e.g. '### Q: {prompt}\\n### A: '."""
    hf_name: Optional[str] = None
    """hf: dataset name on the Hub (or a local dataset directory)."""
    hf_config: Optional[str] = None
    """hf: dataset configuration name."""
    hf_train_split: str = "train"
    """hf: split used for training."""
    hf_eval_split: Optional[str] = None
    """hf: split held out; when null, ``eval_fraction`` of the training split."""
    data_files: Optional[Any] = None
    """hf: local data files read with ``datasets.load_dataset(hf_name, data_files=...)``: a path or glob,
    a list of them, or a {split: path} mapping; ``hf_name`` then names the loader ('json', 'csv',
    'parquet'), or is null to take it from the files' extension."""
    format: str = "auto"
    """jsonl/hf: 'prompt_response' (``prompt_field``/``response_field`` records), 'chat'
    (``{"messages": [{"role": ..., "content": ...}, ...]}`` records rendered with the chat template, the
    loss on the assistant turns alone) or 'auto' (chat when the first record has ``messages_field``)."""
    messages_field: str = "messages"
    """jsonl/hf chat records: the field holding the list of {role, content} messages."""
    chat_template: Optional[str] = None
    """jsonl/hf chat records: a Jinja chat template (the text, or a path to a file holding it) used
    instead of the tokenizer's own; needed when the tokenizer has none (most base models)."""

    def __post_init__(self) -> None:
        _check_choice("data.task", self.task, SYNTHETIC_TASKS + ("jsonl", "hf"))
        _check_range("data.n_train", self.n_train, low=1)
        _check_range("data.n_eval", self.n_eval, low=1)
        _check_range("data.min_len", self.min_len, low=1)
        _check_range("data.max_len", self.max_len, low=self.min_len)
        _check_range("data.n_keys", self.n_keys, low=1, high=10)
        _check_range("data.key_index", self.key_index, low=0, high=self.n_keys - 1)
        _check_range("data.swaps", self.swaps, low=0, high=13)
        _check_range("data.eval_fraction", self.eval_fraction, low=0, high=1, low_inclusive=False, high_inclusive=False)
        if self.task == "jsonl" and not self.path:
            raise ConfigError("data.path", self.path, "a path to a JSONL file when data.task='jsonl'")
        if self.task == "hf" and not self.hf_name and not self.data_files:
            raise ConfigError(
                "data.hf_name",
                self.hf_name,
                "a Hub dataset name, a directory written by datasets' save_to_disk, or a loader name "
                "('json', 'csv', 'parquet') with data.data_files when data.task='hf'",
            )
        _check_choice("data.format", self.format, ("auto", "prompt_response", "chat"))


@dataclass
class TrackingConfig:
    """MLflow tracking of single runs (the sweep adds its own parent run)."""

    enabled: bool = True
    """Log runs to MLflow (tracking URI: MLFLOW_TRACKING_URI, else MLflow's default)."""
    experiment: str = "lora_lab"
    """Experiment that single ``lora_lab.train`` runs are logged to."""
    run_name: Optional[str] = None
    """Run name; when null, one is made from the model and LoRA settings."""
    log_adapter: bool = True
    """Upload the saved adapter as a run artifact."""


@dataclass
class ObjectiveConfig:
    """One quantity the sweep optimises: a final metric of the trial and its direction."""

    metric: str = "eval_loss"
    """A final metric name (see TrialResult.metrics): eval_loss, exact_match, eval_token_accuracy,
    perplexity, trainable_params, peak_memory_mb, tokens_per_s, wall_time_s, effective_rank_mean."""
    direction: str = "minimize"
    """'minimize' or 'maximize'."""

    def __post_init__(self) -> None:
        _check_choice("sweep.objectives.direction", self.direction, ("minimize", "maximize"))


@dataclass
class SamplerConfig:
    """Optuna sampler."""

    name: str = "tpe"
    """'tpe', 'random', 'grid' (every combination of the categorical params), 'cmaes', 'nsgaii'
    (multi-objective) or 'qmc'."""
    seed: int = 0
    """Sampler seed, so a sweep is reproducible (a grid: the order its points run in, see
    ``lora_lab.grid_order``)."""
    n_startup_trials: int = 8
    """tpe/cmaes: random trials before the model-based search starts."""
    population_size: int = 50
    """nsgaii: trials per generation; the first generation is random, so a study needs well over
    this many trials before NSGA-II's selection does anything (Optuna's default is 50)."""


@dataclass
class PrunerConfig:
    """Optuna pruner, fed the eval loss at every evaluation during training."""

    name: str = "none"
    """'none', 'median', 'hyperband' or 'successive_halving'."""
    n_startup_trials: int = 4
    """median: trials that run to the end before pruning starts."""
    n_warmup_steps: int = 0
    """median: optimizer steps of each trial before it can be pruned (evaluations are reported at
    their global step)."""
    min_resource: int = 1
    """hyperband / successive_halving: optimizer steps a trial gets before the first cut."""
    reduction_factor: int = 3
    """hyperband / successive_halving: 1/reduction_factor of the trials go on at each rung."""


@dataclass
class ParamSpec:
    """One searched dimension, declared in a sweep preset's ``params``."""

    type: str = "categorical"
    """'categorical', 'int' or 'float'."""
    choices: Optional[list[Any]] = None
    """categorical: the values (scalars)."""
    low: Optional[float] = None
    """int/float: lower bound."""
    high: Optional[float] = None
    """int/float: upper bound (inclusive)."""
    step: Optional[float] = None
    """int/float: grid spacing."""
    log: bool = False
    """int/float: sample on a log scale."""


@dataclass
class BaselineConfig:
    """A reference run kept out of the search: trained (or evaluated) once per seed next to the
    sweep's trials, with the same base overrides plus its own."""

    name: str = MISSING
    """Label of the baseline (MLflow tag ``lora_lab.baseline``), e.g. 'zero_shot' or 'full_ft'."""
    overrides: list[str] = field(default_factory=list)
    """Hydra overrides applied on top of the sweep's, e.g. ['lora.r=8', 'train.learning_rate=2e-3']."""


@dataclass
class WarmStartConfig:
    """Start a search with the best configurations of an earlier related study (a new task or model
    much like the one that study searched, over the same space), so it reaches a good configuration
    sooner: they run first, each with every seed, count toward ``n_trials``, and the sampler then
    learns from their results as from any trial's."""

    study: Optional[str] = None
    """Name of the earlier Optuna study; null: no warm start."""
    storage: Optional[str] = None
    """Its storage, in the forms ``sweep.storage`` accepts (sqlite:///..., postgresql://..., a path
    ending in .journal); null: where lora_lab keeps a study of that name,
    sweeps/<study>/optuna.journal (or sweeps/<study>/optuna.db where it was begun in sqlite)."""
    top_k: int = 4
    """How many of its best configurations run first (ranked by the mean of its first objective over
    their COMPLETE trials; a configuration outside this search space is skipped)."""

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ConfigError(
                "sweep.warm_start.top_k",
                self.top_k,
                "a whole number >= 1: how many of the earlier study's best configurations run first "
                "(sweep.warm_start.study=null turns warm-starting off)",
            )


@dataclass
class SweepConfig:
    """An Optuna study over trial configs: ``python -m lora_lab.sweep +sweep=<preset>``."""

    study_name: str = MISSING
    """Optuna study name; also the MLflow experiment and the sweeps/<study_name>/ directory."""
    objectives: list[ObjectiveConfig] = field(default_factory=lambda: [ObjectiveConfig()])
    """One objective, or several for a multi-objective (Pareto) study."""
    params: dict[str, ParamSpec] = field(default_factory=dict)
    """Searched values. A key naming a config field ('lora.r') becomes a Hydra override; any
    other key ('alpha_over_r') is a free variable that ``derived`` expressions may use."""
    derived: dict[str, str] = field(default_factory=dict)
    """Config fields computed from sampled values, e.g. lora.lora_alpha: 'alpha_over_r * lora.r'
    (arithmetic, min, max, round, int, float)."""
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    n_trials: Optional[int] = None
    """Trials the study should hold when done (running it again completes the missing ones);
    null with the grid sampler means the whole grid times ``seeds``."""
    timeout_s: Optional[float] = None
    """Stop starting new trials after this many seconds."""
    seeds: int = 1
    """Each configuration is trained with this many seeds: train.seed = s, s+1, ..., s+seeds-1, s being
    the composed config's train.seed (0 by default)."""
    storage: Optional[str] = None
    """Optuna storage URL (sqlite:///..., postgresql://..., or a path ending in .journal for a
    journal file); null means the journal file sweeps/<study_name>/optuna.journal (or
    sweeps/<study_name>/optuna.db where a study was started in that sqlite file)."""
    baselines: list[BaselineConfig] = field(default_factory=list)
    """Reference runs outside the search, each run once per seed before it, e.g.
    [{name: default_lora, overrides: []}] (the sweep's config with no sampled value)."""
    confirm_top_k: int = 0
    """After a non-grid search: re-run the k best configurations with fresh seeds (MLflow tag
    ``lora_lab.confirm=true``), since the best of many noisy trials is biased optimistic."""
    confirm_seeds: int = 2
    """Fresh seeds per confirmed configuration (train.seed continues after the search's seeds:
    s+seeds, s+seeds+1, ...)."""
    experiment: Optional[str] = None
    """MLflow experiment; null means the study name."""
    worker: int = 0
    """Index of this worker when several share one storage (set by a Hydra multirun)."""
    cpu_threads: Optional[int] = None
    """CPU threads for this worker's torch ops; null: lora_lab's policy (``lora_lab.threads``: the
    cores the worker owns, i.e. all cores, cores / workers for local workers, the SLURM allocation)."""
    max_failures: Optional[int] = None
    """Stop when this many trials failed in a row (null: stop only when every trial so far failed)."""
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    """Run the best configurations of an earlier study first (``warm_start.study``; off by default)."""
    retry_failed: bool = False
    """Run again the configurations whose trials failed by their own error (NaN loss, a value the
    model refuses, out of memory), which a study otherwise keeps as results. Failures of the
    environment (missing file, no space, ...) are always run again: see docs/faults.md."""

    def __post_init__(self) -> None:
        _check_study_name("sweep.study_name", self.study_name)
        if self.warm_start.study is not None:
            _check_study_name("sweep.warm_start.study", self.warm_start.study)
        if not self.objectives:
            raise ConfigError("sweep.objectives", self.objectives, "at least one {metric, direction}")
        _check_choice("sweep.sampler.name", self.sampler.name, ("tpe", "random", "grid", "cmaes", "nsgaii", "qmc"))
        _check_choice("sweep.pruner.name", self.pruner.name, ("none", "median", "hyperband", "successive_halving"))
        _check_range("sweep.seeds", self.seeds, low=1)
        if self.n_trials is not None:
            _check_range("sweep.n_trials", self.n_trials, low=1)
        _check_range("sweep.sampler.population_size", self.sampler.population_size, low=2)
        _check_range("sweep.confirm_top_k", self.confirm_top_k, low=0)
        _check_range("sweep.confirm_seeds", self.confirm_seeds, low=1)
        names = [b.name for b in self.baselines]
        if len(set(names)) != len(names):
            raise ConfigError("sweep.baselines", names, "baselines with distinct names")
        for name, spec in self.params.items():
            _check_choice(f"sweep.params.{name}.type", spec.type, ("categorical", "int", "float"))
            if spec.type == "categorical" and not spec.choices:
                raise ConfigError(f"sweep.params.{name}.choices", spec.choices, "a non-empty list of scalars")
            if spec.type != "categorical" and (spec.low is None or spec.high is None or spec.low > spec.high):
                raise ConfigError(
                    f"sweep.params.{name}", f"low={spec.low}, high={spec.high}", "numbers with low <= high"
                )
        if self.sampler.name == "grid" and any(s.type != "categorical" for s in self.params.values()):
            raise ConfigError(
                "sweep.sampler.name", "grid", "grid only with categorical params (give int/float params as choices)"
            )
        if self.sampler.name == "grid" and self.warm_start.study is not None:
            raise ConfigError(
                "sweep.warm_start.study",
                self.warm_start.study,
                "null with sweep.sampler.name=grid: a grid runs every point of its space whatever comes "
                "first, so starting it from an earlier study's best gains nothing (warm-start a sampled "
                "search: sweep.sampler.name=tpe, random, cmaes, nsgaii or qmc)",
            )


@dataclass
class ReportConfig:
    """``python -m lora_lab.report``: which sweep to read from MLflow and where to write."""

    study: str = MISSING
    """Study name of the sweep (its MLflow experiment unless ``experiment`` is set)."""
    experiment: Optional[str] = None
    """MLflow experiment to read; null means the study name."""
    metric: Optional[str] = None
    """Quality metric of the tables; null means the sweep's first objective (else eval_loss)."""
    direction: Optional[str] = None
    """'minimize' or 'maximize'; null means the sweep's (else minimize)."""
    output_dir: str = "reports"
    """The report goes to <output_dir>/<study>/."""
    confidence: float = 0.95
    """Level of the t confidence intervals in the tables (0.95: mean ± the 95% interval's half-width)."""
    alpha: float = 0.05
    """Error rate of each one-sided test behind 'equivalent' and 'worse' (TOST at alpha; the comparison's
    interval shown is the 1 - 2 alpha one)."""
    ratio_margin: float = 1.25
    """A loss (any metric positive in every run) is equivalent to the best when shown within this factor
    of it (1.25: at most 25% higher), compared on the log scale."""
    proportion_margin: float = 0.02
    """Exact match and token accuracy are equivalent to the best when shown within this share of it
    (0.02: two points), over the prompts scored."""
    difference_margin: float = 0.01
    """Any other metric is equivalent to the best when shown within this difference, in its units."""
    correction: str = "holm"
    """'holm': p-values corrected for the number of comparisons with the best; 'none': not corrected."""
    ui_url: Optional[str] = None
    """MLflow UI address (http://host:5000) for run links; null: the tracking URI when it is http(s)."""

    def __post_init__(self) -> None:
        _check_study_name("study", self.study)
        _check_range("confidence", self.confidence, low=0.5, high=0.999)
        _check_range("alpha", self.alpha, low=0.001, high=0.25)
        _check_range("ratio_margin", self.ratio_margin, low=1.0, low_inclusive=False)
        _check_range("proportion_margin", self.proportion_margin, low=0.0, high=1.0)
        _check_range("difference_margin", self.difference_margin, low=0.0)
        _check_choice("correction", self.correction, ("holm", "none"))


@dataclass
class TrialConfig:
    """Everything one trial needs: the composed config of ``python -m lora_lab.train``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    quant: QuantConfig = field(default_factory=QuantConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    sweep: Optional[SweepConfig] = None
    """Present only under ``python -m lora_lab.sweep +sweep=<preset>``."""

    def __post_init__(self) -> None:
        init = self.lora.init_lora_weights
        if init in BASE_REWRITING_INITS and self.quant.method != "none":
            raise ConfigError(
                "lora.init_lora_weights",
                init,
                f"{', '.join(repr(c) for c in INIT_LORA_WEIGHTS if c not in BASE_REWRITING_INITS)} "
                f"with quant.method={self.quant.method!r} ({init} rewrites the base weights it "
                f"starts from, which a quantized base cannot hold exactly; use quant=none for {init})",
            )
        if self.lora.method == "full" and self.quant.method != "none":
            raise ConfigError(
                "lora.method",
                "full",
                f"'lora' or 'none' with quant.method={self.quant.method!r}: "
                "full fine-tuning trains the base weights themselves, which needs them "
                "unquantized (quant=none)",
            )


def _pretrain_model() -> ModelConfig:
    return ModelConfig(
        name="tiny_llama",
        source="builtin",
        pretrained=None,
        hidden_size=128,
        intermediate_size=256,
        initializer_range=0.02,
    )


@dataclass
class PretrainConfig:
    """``python -m lora_lab.pretrain``: pretrain the shipped tiny_llama on task A (conf/pretrain.yaml).

    Every weight trains (no adapter); the model starts from ``model``'s seeded random weights."""

    model: ModelConfig = field(default_factory=_pretrain_model)
    """The architecture (model.source must be 'builtin': its fields build the random start)."""
    data: DataConfig = field(default_factory=lambda: DataConfig(task="cipher_family"))
    """Task A, the pretraining data (data.task must be 'cipher_family')."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The optimisation schedule, as for a trial."""
    output_dir: Optional[str] = None
    """Where the model goes; null means the package's own lora_lab/assets/<model.name>/."""
    min_exact_match: float = 0.99
    """The model is written only if its held-out task A exact match reaches this (a weak base
    would make every fine-tuning result on it meaningless)."""

    def __post_init__(self) -> None:
        _check_choice("model.source", self.model.source, ("builtin",))
        _check_choice("data.task", self.data.task, ("cipher_family",))
        _check_range("min_exact_match", self.min_exact_match, low=0, high=1)


@dataclass
class ExportConfig:
    """``python -m lora_lab.export``: merge a trained adapter into its base model (conf/export.yaml)."""

    adapter: str = MISSING
    """Directory of an adapter saved by a trial (``<run dir>/adapter``): PEFT's files plus the trial's
    model and quantization settings (``lora_lab_trial.json``), which say which base to merge into."""
    output_dir: str = MISSING
    """Where the merged model and its tokenizer are written (a directory that does not exist yet)."""
    dequantize: bool = False
    """An adapter trained on a quantized base (QLoRA): merge into the base's weights dequantized to
    the compute dtype, the weights the adapter was trained against, giving a full-precision model.
    Without it such an adapter is refused: merging into 4-bit weights would re-quantize the sum."""
    base: Optional[str] = None
    """The base model as a Hub id or local directory, when it is no longer where the trial loaded it
    from (``model.pretrained`` of the trial); null: the trial's own."""


def register_configs() -> None:
    """Register the schemas with Hydra so conf/ YAML files can extend them."""
    cs = ConfigStore.instance()
    cs.store(name="schema_trial", node=TrialConfig)
    cs.store(name="schema_report", node=ReportConfig)
    cs.store(name="schema_pretrain", node=PretrainConfig)
    cs.store(name="schema_export", node=ExportConfig)


TRIAL_GROUPS = (*names.TRIAL_GROUPS, "tracking")
"""The config groups a TrialConfig holds (a composed config may also hold ``sweep``)."""


@functools.cache
def _trial_schema() -> DictConfig:
    """TrialConfig as an OmegaConf schema, built once per process (building it is slower than copying
    it); ``OmegaConf.merge`` copies it."""
    return OmegaConf.structured(TrialConfig)


def to_trial_config(cfg: DictConfig) -> TrialConfig:
    """Turn a composed config into typed objects, running every range and choice check.

    A config composed from conf/config.yaml is typed already (its defaults start with the
    ``schema_trial`` schema, so Hydra checked every key and type while composing): its groups become
    the dataclasses directly, whose ``__post_init__`` checks ranges and choices. Any other config is
    merged into the schema first (an order of magnitude slower), which checks keys and types too."""
    groups = [k for k in TRIAL_GROUPS if k in cfg]
    if OmegaConf.get_type(cfg) is TrialConfig:
        trial = TrialConfig(**{k: OmegaConf.to_object(cfg[k]) for k in groups})
    else:
        trial = _merged_trial_config(cfg, groups)
    assert isinstance(trial, TrialConfig)
    return trial


def _merged_trial_config(cfg: DictConfig, groups: list[str]) -> TrialConfig:
    node = OmegaConf.masked_copy(cfg, groups)
    return OmegaConf.to_object(OmegaConf.merge(_trial_schema(), node))


def flatten(trial: TrialConfig) -> dict[str, Any]:
    """Flat 'group.field' -> value mapping of a trial config, for logging as parameters."""
    container = dataclasses.asdict(trial)  # plain values already: no OmegaConf round trip, which is far slower
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and not (prefix.endswith("target_sets")):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), sub)
        else:
            out[prefix] = value

    container.pop("sweep", None)
    walk("", container)
    return out


def logged_fields(trial: TrialConfig) -> dict[str, Any]:
    """``flatten(trial)`` less the fields this trial never reads, for its MLflow params: a trial
    without an adapter (the baselines, lora.method 'none' or 'full') keeps lora.method alone of the
    lora group, so its run shows no r, lora_alpha or targets it never had."""
    flat = flatten(trial)
    if trial.lora.method != "lora":
        flat = {k: v for k, v in flat.items() if not k.startswith("lora.") or k == "lora.method"}
    return flat
