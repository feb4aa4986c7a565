"""One trial: train a LoRA/QLoRA adapter with transformers' Trainer and evaluate it.

``run_trial`` is the unit a sweep calls; ``python -m lora_lab.train <overrides>`` runs one trial
from the command line and logs it to MLflow as a run of its own.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # the command: Hydra composes the config before the imports below run (see cli.run_command)
    from lora_lab import cli

    cli.run_command("lora_lab.train")
    sys.exit()

import gc
import json
import math
import resource
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from lora_lab import cli, threads
from lora_lab.base_scores import BaseScores, score_key, trial_settings
from lora_lab.config import TrialConfig, register_configs, to_trial_config
from lora_lab.data import TaskData, build_task_data
from lora_lab.errors import TrialFailedError
from lora_lab.evaluate import argmax_logits, exact_match, perplexity, score, token_accuracy
from lora_lab.model import targets
from lora_lab.model.adapter import attach_adapter, detach_adapter, save_adapter
from lora_lab.model.base import (
    base_model_id,
    base_writes,
    bf16_by_default,
    device,
    load_base_model,
    load_tokenizer,
    loaded_fingerprint,
    trial_base,
)
from lora_lab.names import FORGET_PREFIX, RETAIN_PREFIX, TASK_A_METRICS


@dataclass
class TrialResources:
    """What every trial of a sweep shares: tokenizer, frozen base model, tokenized data."""

    key: str
    tokenizer: PreTrainedTokenizerBase
    base_model: PreTrainedModel
    task: TaskData
    scores: BaseScores = field(default_factory=BaseScores)
    """The untrained base's scores (task A before adaptation, the zero-shot baseline), computed once
    per base, data and evaluation settings and kept in memory, and on disk where the cache has a
    directory (a sweep's): see ``lora_lab.base_scores``."""


def resources_key(cfg: TrialConfig) -> str:
    """Trials whose keys match can share one base model and one tokenized dataset."""
    shared = {
        "model": asdict(cfg.model),
        "quant": asdict(cfg.quant),
        "data": asdict(cfg.data),
        "max_seq_len": cfg.train.max_seq_len,
    }
    return json.dumps(shared, sort_keys=True, default=str)


def build_resources(cfg: TrialConfig, base_scores_dir: str | Path | None = None) -> TrialResources:
    """Load the tokenizer and base model and tokenize the data: the per-sweep, not per-trial, work.
    The base's scores are kept in ``base_scores_dir`` too when given (see ``lora_lab.base_scores``)."""
    tokenizer = load_tokenizer(cfg.model)
    task = build_task_data(cfg.data, tokenizer, cfg.train.max_seq_len)
    base = load_base_model(cfg.model, cfg.quant, tokenizer)
    return TrialResources(
        key=resources_key(cfg), tokenizer=tokenizer, base_model=base, task=task, scores=BaseScores(base_scores_dir)
    )


class ResourceCache:
    """Keeps the last built TrialResources and rebuilds only when a trial needs different ones.
    ``base_scores_dir``: where the untrained base's scores are kept across processes (a sweep's
    ``sweeps/<study>/base_scores/``); None keeps them for this process alone."""

    def __init__(self, base_scores_dir: str | Path | None = None) -> None:
        self._current: TrialResources | None = None
        self.builds = 0
        self.base_scores_dir = base_scores_dir

    def get(self, cfg: TrialConfig) -> TrialResources:
        """Resources for this trial, reused from the previous trial whenever possible."""
        if self._current is None or self._current.key != resources_key(cfg):
            gc.unfreeze()  # let the collector reach the resources being replaced
            self._current = None  # free the old model before loading the next
            self._current = build_resources(cfg, self.base_scores_dir)
            self.builds += 1
            # What exists now (libraries, base model, data) lives as long as the sweep. Freezing it
            # keeps the full collections that transformers/accelerate run in every trial (gc.collect()
            # in Trainer.train) from rescanning the hundreds of thousands of long-lived objects every trial.
            gc.collect()
            gc.freeze()
        return self._current

    def invalidate(self) -> None:
        """Drop the cached base model (after a trial that may have changed it)."""
        self._current = None


@dataclass
class TrialResult:
    """Final metrics of one trial, plus its step history and where its adapter was saved."""

    eval_loss: float
    perplexity: float
    token_accuracy: float
    exact_match: float
    trainable_params: int
    total_params: int
    trainable_pct: float
    wall_time_s: float
    train_time_s: float
    tokens_per_s: float
    peak_memory_mb: float
    peak_memory_kind: str
    steps: int
    output_dir: str
    adapter_dir: str | None
    target_modules: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    effective_rank: dict[str, Any] = field(default_factory=dict)
    retain: dict[str, float] = field(default_factory=dict)
    """Task A and forgetting metrics (names.TASK_A_METRICS, names.FORGET_METRICS) when the data has
    a task A (data.task=cipher_swap); empty otherwise."""
    method: str = "lora"
    """lora.method of the trial: 'lora', or a baseline ('full', 'none')."""

    def metrics(self) -> dict[str, float]:
        """The scalar final metrics under the names they are logged to MLflow with (and that
        sweep objectives name)."""
        names = (
            "eval_loss",
            "perplexity",
            "exact_match",
            "trainable_params",
            "total_params",
            "trainable_pct",
            "wall_time_s",
            "train_time_s",
            "tokens_per_s",
            "peak_memory_mb",
        )
        out = {name: float(getattr(self, name)) for name in names}
        out["eval_token_accuracy"] = float(self.token_accuracy)
        out.update({name: float(value) for name, value in self.retain.items()})
        return out


class LoraTrainer(Trainer):
    """transformers' Trainer, counting each batch's FLOPs from a parameter count taken once.

    Trainer.floating_point_ops recounts the model's parameters at every step (a walk over every
    module, a few percent of a CPU step on the built-in model); the count cannot change while
    an adapter trains, so the same number (6 x tokens x non-embedding parameters) comes from one walk."""

    _non_embedding_params: int | None = None

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        main_input = getattr(self.model, "main_input_name", "input_ids")
        if main_input not in inputs or not hasattr(self.model, "num_parameters"):
            return super().floating_point_ops(inputs)
        if self._non_embedding_params is None:
            self._non_embedding_params = self.model.num_parameters(exclude_embeddings=True)
        return 6 * inputs[main_input].numel() * self._non_embedding_params


class NonFiniteLossGuard(TrainerCallback):
    """Stop a trial as failed as soon as the training loss is NaN or infinite."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise TrialFailedError(
                f"training loss became {loss} at step {state.global_step}: "
                f"the run diverged (try a lower train.learning_rate or lora.lora_alpha)."
            )


def training_arguments(cfg: TrialConfig, output_dir: Path, show_progress: bool) -> TrainingArguments:
    """transformers' TrainingArguments for a trial config."""
    train = cfg.train
    on_cuda = device().type == "cuda"
    precision = train.precision
    if precision == "auto":
        precision = "bf16" if bf16_by_default() else "fp32"
    return TrainingArguments(
        output_dir=str(output_dir),
        max_steps=train.max_steps if train.max_steps is not None else -1,
        num_train_epochs=train.epochs,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=max(train.batch_size, 64),
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        learning_rate=train.learning_rate,
        warmup_steps=float(train.warmup_ratio),
        lr_scheduler_type=train.lr_scheduler,
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        eval_strategy="steps",
        eval_steps=train.eval_every,
        logging_steps=train.logging_steps,
        save_strategy="no",
        report_to="none",
        seed=train.seed,
        data_seed=train.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not on_cuda,
        gradient_checkpointing=train.gradient_checkpointing,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=not show_progress,
        label_names=["labels"],
        logging_nan_inf_filter=False,
    )  # a NaN loss must reach NonFiniteLossGuard, not be averaged away


def _peak_memory_mb() -> tuple[float, str]:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
    # ru_maxrss is in KiB on Linux: the process-wide high-water mark, not this trial's alone.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"


def retain_scores(
    model: torch.nn.Module, resources: TrialResources, cfg: TrialConfig, generate: bool = True
) -> dict[str, float]:
    """Loss, token accuracy and exact match of ``model`` on held-out task A (the base's pretraining
    task, on the keys the new task leaves unchanged); {} when the data has no task A."""
    task = resources.task
    if task.retain_examples is None:
        return {}
    scores = score(model, task.retain_examples, batch_size=max(cfg.train.batch_size, 64))
    records = task.retain_records[: cfg.train.eval_generate]
    match = (
        exact_match(model, resources.tokenizer, records, task.max_response_tokens)
        if generate and records
        else float("nan")
    )
    return {
        f"{RETAIN_PREFIX}eval_loss": scores["loss"],
        f"{RETAIN_PREFIX}token_accuracy": scores["token_accuracy"],
        f"{RETAIN_PREFIX}exact_match": match,
    }


def _bare_base_fingerprint(resources: TrialResources) -> str:
    """The shared base's weight checksum as loaded (taken once, before any adapter is attached:
    PEFT wraps the base model's own layers in place)."""
    return loaded_fingerprint(resources.base_model, check_bare=True)


def base_retain_scores(resources: TrialResources, cfg: TrialConfig) -> dict[str, float]:
    """The shared base model's task A scores, computed once per base, data and evaluation settings
    (``resources.scores``: this process, and a sweep's other workers and restarts). Must first be
    called before an adapter is attached."""
    task = resources.task
    assert task.retain_examples is not None and task.retain_records is not None
    settings = trial_settings(
        cfg,
        task.retain_records[: cfg.train.eval_generate],
        task.retain_examples,
        task.max_response_tokens,
        device().type,
    )

    def compute() -> dict[str, float]:
        if any(hasattr(module, "lora_A") for module in resources.base_model.modules()):
            raise RuntimeError("the base model's task A scores were asked for while an adapter is attached")
        return retain_scores(resources.base_model, resources, cfg)

    key = score_key("retain", _bare_base_fingerprint(resources), settings)
    return resources.scores.get(key, list(TASK_A_METRICS), compute)


def retain_metrics(
    model: torch.nn.Module, resources: TrialResources, cfg: TrialConfig, generate: bool = True
) -> dict[str, float]:
    """Task A scores of the adapted model and forgetting: how much worse than the base before
    adaptation (``forget_eval_loss`` = after - before, ``forget_exact_match`` = before - after)."""
    if resources.task.retain_examples is None:
        return {}
    before = base_retain_scores(resources, cfg)
    after = retain_scores(model, resources, cfg, generate=generate)
    after[f"{FORGET_PREFIX}eval_loss"] = after[f"{RETAIN_PREFIX}eval_loss"] - before[f"{RETAIN_PREFIX}eval_loss"]
    after[f"{FORGET_PREFIX}exact_match"] = before[f"{RETAIN_PREFIX}exact_match"] - after[f"{RETAIN_PREFIX}exact_match"]
    return after


def fully_trainable(model: PreTrainedModel) -> PreTrainedModel:
    """The full fine-tuning baseline's model: every weight trainable. Give it the trial's private
    copy of the base (``model.base.trial_base`` with lora.method=full), never the shared base itself:
    training that in place would hand every later trial a fine-tuned base."""
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def _parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    if hasattr(model, "get_nb_trainable_parameters"):  # PEFT counts 4-bit weights at their real size
        return model.get_nb_trainable_parameters()
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def zero_shot_trial(cfg: TrialConfig, output_dir: Path, resources: TrialResources, started: float) -> TrialResult:
    """The zero-shot baseline (lora.method=none): the base model scored on the held-out split as it
    is; nothing trains, so task A is unchanged (forgetting 0 by construction)."""
    model = resources.base_model
    task = resources.task
    records = task.eval_records[: cfg.train.eval_generate]

    def compute() -> dict[str, float]:
        scores = score(model, task.eval_examples, batch_size=max(cfg.train.batch_size, 64))
        match = (
            exact_match(model, resources.tokenizer, records, task.max_response_tokens)
            if cfg.train.eval_generate > 0
            else float("nan")
        )
        return {**scores, "exact_match": match}

    settings = trial_settings(cfg, records, task.eval_examples, task.max_response_tokens, device().type)
    scores = resources.scores.get(
        score_key("zero_shot", _bare_base_fingerprint(resources), settings),
        ["loss", "token_accuracy", "exact_match"],
        compute,
    )  # the same for every seed of the baseline: computed once per base, data and settings
    match = scores["exact_match"]
    retain = {}
    if task.retain_examples is not None:  # nothing trained: task A after is task A before, forgetting 0
        retain = dict(base_retain_scores(resources, cfg))
        retain.update({f"{FORGET_PREFIX}eval_loss": 0.0, f"{FORGET_PREFIX}exact_match": 0.0})
    _, total = _parameter_counts(model)
    peak, peak_kind = _peak_memory_mb()
    return TrialResult(
        eval_loss=scores["loss"],
        perplexity=perplexity(scores["loss"]),
        token_accuracy=scores["token_accuracy"],
        exact_match=match,
        trainable_params=0,
        total_params=int(total),
        trainable_pct=0.0,
        wall_time_s=time.perf_counter() - started,
        train_time_s=0.0,
        tokens_per_s=float("nan"),
        peak_memory_mb=peak,
        peak_memory_kind=peak_kind,
        steps=0,
        output_dir=str(output_dir),
        adapter_dir=None,
        history=[{"step": 0, "eval_loss": scores["loss"], "eval_token_accuracy": scores["token_accuracy"]}],
        retain=retain,
        method="none",
    )


def run_trial(
    cfg: TrialConfig,
    output_dir: str | Path,
    resources: TrialResources | None = None,
    callbacks: Iterable[TrainerCallback] = (),
    show_progress: bool = True,
    on_adapter_ready=None,
    pruned=None,
) -> TrialResult:
    """Train and evaluate one adapter (or, with lora.method, one baseline). Reuses ``resources`` (a
    sweep's shared base model and data) when given; the base model is left as it was found, so the
    next trial starts clean.

    ``on_adapter_ready(peft_model)`` is called after training, before the adapter is removed, so
    callers can inspect the trained adapter (the sweep measures its effective rank there); it is
    not called for the baselines, which have no adapter.
    ``pruned()``, asked after training, says whether the caller stopped the trial for good (a
    pruned sweep trial): its exact-match generation and adapter saving are then skipped, as
    nothing uses a pruned trial's adapter (exact_match is NaN, adapter_dir None)."""
    started = time.perf_counter()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if resources is None:
        resources = build_resources(cfg)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    method = cfg.lora.method
    if resources.task.retain_examples is not None:
        base_retain_scores(resources, cfg)  # the "before" of forgetting, while the base is still bare
    if method == "none":
        return zero_shot_trial(cfg, output_dir, resources, started)

    set_seed(cfg.train.seed)  # the adapter's initialisation depends on it
    with trial_base(resources.base_model, base_writes(cfg.lora)) as base:
        return _train_and_evaluate(
            cfg, output_dir, resources, base, callbacks, show_progress, on_adapter_ready, pruned, started
        )


def _train_and_evaluate(
    cfg: TrialConfig,
    output_dir: Path,
    resources: TrialResources,
    base: PreTrainedModel,
    callbacks,
    show_progress: bool,
    on_adapter_ready,
    pruned,
    started: float,
) -> TrialResult:
    method = cfg.lora.method
    if method == "full":
        # ``base`` is a private copy here (lora.method=full is one of model.base.base_writes), so the shared
        # base stays the pretrained one for the trials after this.
        model = fully_trainable(base)
    else:
        model = attach_adapter(base, cfg.lora, cfg.model)
    try:
        trainable, total = _parameter_counts(model)
        if show_progress:
            print(
                f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"
            )
        trainer = LoraTrainer(
            model=model,
            args=training_arguments(cfg, output_dir, show_progress),
            train_dataset=resources.task.train_examples,
            eval_dataset=resources.task.eval_examples,
            data_collator=resources.task.train_examples.collator(),
            compute_metrics=token_accuracy,
            preprocess_logits_for_metrics=argmax_logits,
            callbacks=[NonFiniteLossGuard(), *callbacks],
        )
        if not show_progress:
            trainer.remove_callback(PrinterCallback)  # the caller shows progress its own way
        train_output = trainer.train()
        steps = trainer.state.global_step
        evals = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
        final = evals[-1] if evals and evals[-1].get("step") == steps else trainer.evaluate()
        was_pruned = pruned is not None and pruned()
        match = (
            exact_match(
                model,
                resources.tokenizer,
                resources.task.eval_records[: cfg.train.eval_generate],
                resources.task.max_response_tokens,
            )
            if cfg.train.eval_generate > 0 and not was_pruned
            else float("nan")
        )
        retain = retain_metrics(model, resources, cfg, generate=not was_pruned)
        adapter_dir = None
        if cfg.train.save_adapter and not was_pruned and method == "lora":
            adapter_dir = str(output_dir / "adapter")
            save_adapter(model, adapter_dir, base_model=base_model_id(cfg.model), trial=cfg)
        if on_adapter_ready is not None and method == "lora":
            on_adapter_ready(model)
        train_time = float(train_output.metrics["train_runtime"])
        peak, peak_kind = _peak_memory_mb()
        eval_loss = float(final["eval_loss"])
        targets = sorted(model.peft_config["default"].target_modules) if method == "lora" else []
        return TrialResult(
            eval_loss=eval_loss,
            perplexity=perplexity(eval_loss),
            token_accuracy=float(final["eval_token_accuracy"]),
            exact_match=match,
            trainable_params=int(trainable),
            total_params=int(total),
            trainable_pct=100.0 * trainable / total,
            wall_time_s=time.perf_counter() - started,
            train_time_s=train_time,
            tokens_per_s=trainer.state.num_input_tokens_seen / max(train_time, 1e-9),
            peak_memory_mb=peak,
            peak_memory_kind=peak_kind,
            steps=steps,
            output_dir=str(output_dir),
            adapter_dir=adapter_dir,
            target_modules=targets,
            history=list(trainer.state.log_history),
            retain=retain,
            method=method,
        )
    finally:
        if method == "lora":
            detach_adapter(model)
        else:
            del model  # the trial's private copy of the base; the shared base was never touched


def print_result(result: TrialResult) -> None:
    """One readable block of the final metrics."""
    rows = [
        ("eval loss", f"{result.eval_loss:.4f}"),
        ("perplexity", f"{result.perplexity:.3f}"),
        ("token accuracy", f"{result.token_accuracy:.3f}"),
        ("exact match", f"{result.exact_match:.3f}"),
        ("trainable params", f"{result.trainable_params:,} ({result.trainable_pct:.3f}%)"),
        ("wall time", f"{result.wall_time_s:.1f} s (training {result.train_time_s:.1f} s)"),
        ("tokens/s", f"{result.tokens_per_s:,.0f}"),
        *[(name.replace("_", " "), f"{value:.4f}") for name, value in result.retain.items()],
        (f"peak memory ({result.peak_memory_kind})", f"{result.peak_memory_mb:,.0f} MiB"),
        ("adapter", result.adapter_dir or "not saved"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def _open_tracking_in_background() -> Future:
    """lora_lab.track and an MlflowClient whose store is open, made on a background thread."""

    def open_tracking():
        from lora_lab import track
        from lora_lab.storage import check_tracking_store

        check_tracking_store()  # a damaged mlflow.db: one paragraph, before the client writes into it
        return track, track.MlflowClient()  # the client opens (and if needed migrates) its store

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lora_lab-open-tracking")
    future = pool.submit(open_tracking)
    pool.shutdown(wait=False)
    return future


register_configs()


def command(cfg: DictConfig) -> float:
    """``python -m lora_lab.train``: one trial, logged to MLflow as its own run (``cfg`` composed by
    ``cli.run_command``)."""
    from hydra.core.hydra_config import HydraConfig

    cli.quiet_libraries(optuna_too=False)
    threads.apply()
    trial_cfg = to_trial_config(cfg)
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    # MLflow (its imports) and its tracking store (SQLAlchemy, Alembic, the schema check: together a
    # large share of start-up, benchmarks/bench_startup.py) are opened on a thread of their own while
    # the model and data build; the run itself is created only once they are built, so a trial that
    # cannot start leaves no run behind.
    opening = _open_tracking_in_background() if trial_cfg.tracking.enabled else None
    resources = build_resources(trial_cfg)
    if trial_cfg.lora.method == "lora":  # a set the model cannot express stops here, before a run is created
        targets.for_trial(resources.base_model, trial_cfg.lora, trial_cfg.model)
    gc.collect()
    gc.freeze()  # the libraries, model and data live until exit: see ResourceCache.get
    if opening is None:
        result = run_trial(trial_cfg, output_dir, resources)
        print_result(result)
        return result.eval_loss
    track, client = opening.result()
    with track.single_run(trial_cfg, OmegaConf.to_yaml(cfg), client=client) as run:
        run.log_dataset(resources.task, trial_cfg.data)
        result = run_trial(
            trial_cfg, output_dir, resources, callbacks=run.callbacks(), on_adapter_ready=run.on_adapter_ready
        )
        run.log_result(result, log_adapter=trial_cfg.tracking.log_adapter)
    print_result(result)
    return result.eval_loss
