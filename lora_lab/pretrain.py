"""``python -m lora_lab.pretrain``: pretrain the shipped ``tiny_llama`` base model on task A.

The model that ``model=tiny_llama`` loads is not downloaded: lora_lab trains it here, with every
weight trainable, on the cipher family (``data.task=cipher_family``: words through one of a few
letter permutations, chosen by a key tag) and writes it with ``save_pretrained`` (safetensors,
config, tokenizer) to ``lora_lab/assets/tiny_llama/``, where it ships as package data. Fine-tuning it
on the default task B (``data=cipher_swap``, one key with a designed number of letter pairs
exchanged) is then real fine-tuning: the base already solves a related task.

The settings are in ``conf/pretrain.yaml``; running the command again rebuilds the same model
(seeded data, seeded initialisation; bit-for-bit on the same torch build and CPU).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from transformers import LlamaForCausalLM, PrinterCallback, Trainer, set_seed

from lora_lab import cli, threads
from lora_lab.config import PretrainConfig, TrialConfig, register_configs
from lora_lab.data import TaskData, build_task_data
from lora_lab.errors import TrialFailedError
from lora_lab.evaluate import argmax_logits, exact_match, token_accuracy
from lora_lab.model.base import ASSETS_DIR, builtin_llama_config, builtin_tokenizer
from lora_lab.train import NonFiniteLossGuard, training_arguments

SUMMARY_FILE = "pretrain.json"
"""Written beside the weights: the settings that built them and their held-out task A scores."""


class Pretrainer:
    """Life cycle: ``__init__`` reads the config, ``setup()`` builds the tokenizer, data and the
    randomly initialised model, ``run()`` trains, checks and writes it."""

    def __init__(self, cfg: PretrainConfig, show_progress: bool = True):
        self.cfg = cfg
        self.show_progress = show_progress
        self.output_dir = Path(cfg.output_dir) if cfg.output_dir else ASSETS_DIR / cfg.model.name
        self.tokenizer = None
        self.task: TaskData | None = None
        self.model: LlamaForCausalLM | None = None

    def setup(self) -> None:
        """The character-level tokenizer, task A's tokenized splits and the seeded random model."""
        self.tokenizer = builtin_tokenizer()
        self.task = build_task_data(self.cfg.data, self.tokenizer, self.cfg.train.max_seq_len)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.model.init_seed)
            self.model = LlamaForCausalLM(builtin_llama_config(self.cfg.model, self.tokenizer))
        self.model.config.use_cache = False

    def run(self) -> dict[str, Any]:
        """Train every weight on task A, score held-out task A and write the model (only if it
        reaches ``min_exact_match``). Returns the summary written to ``pretrain.json``."""
        if self.model is None:
            self.setup()
        cfg, task = self.cfg, self.task
        started = time.perf_counter()
        set_seed(cfg.train.seed)
        with tempfile.TemporaryDirectory(prefix="lora_lab_pretrain_") as scratch:
            trial_view = TrialConfig(model=cfg.model, data=cfg.data, train=cfg.train)
            trainer = Trainer(
                model=self.model,
                args=training_arguments(trial_view, Path(scratch), self.show_progress),
                train_dataset=task.train_examples,
                eval_dataset=task.eval_examples,
                data_collator=task.train_examples.collator(),
                compute_metrics=token_accuracy,
                preprocess_logits_for_metrics=argmax_logits,
                callbacks=[NonFiniteLossGuard()],
            )
            if not self.show_progress:
                trainer.remove_callback(PrinterCallback)
            trainer.train()
            final = trainer.evaluate()
        match = exact_match(
            self.model, self.tokenizer, task.eval_records[: cfg.train.eval_generate], task.max_response_tokens
        )
        summary = {
            "command": "python -m lora_lab.pretrain",
            "config": {k: v for k, v in asdict(cfg).items() if k != "output_dir"},
            "parameters": int(self.model.num_parameters()),
            "steps": int(trainer.state.global_step),
            "train_time_s": round(time.perf_counter() - started, 1),
            "taskA_eval_loss": float(final["eval_loss"]),
            "taskA_token_accuracy": float(final["eval_token_accuracy"]),
            "taskA_exact_match": float(match),
            "taskA_exact_match_prompts": min(cfg.train.eval_generate, len(task.eval_records)),
            "data_digest": task.digest,
        }
        if match < cfg.min_exact_match:
            raise TrialFailedError(
                f"the pretrained model solves {match:.3f} of held-out task A, below min_exact_match="
                f"{cfg.min_exact_match}; nothing was written to {self.output_dir}. Train longer "
                f"(train.max_steps) or wider (model.hidden_size)."
            )
        self._write(summary)
        return summary

    def _write(self, summary: dict[str, Any]) -> None:
        """Save into a staging directory next to the target, then swap it in, so a reader never
        sees a half-written model."""
        self.output_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.output_dir.parent, prefix=f".{self.output_dir.name}-"))
        try:
            self.model.config.use_cache = True
            self.model.save_pretrained(staging)
            self.tokenizer.save_pretrained(staging)
            (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
            if self.output_dir.exists():
                old = self.output_dir.with_name(f".{self.output_dir.name}-old")
                shutil.rmtree(old, ignore_errors=True)
                self.output_dir.rename(old)
                staging.rename(self.output_dir)
                shutil.rmtree(old, ignore_errors=True)
            else:
                staging.rename(self.output_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


register_configs()


@hydra.main(version_base=None, config_path=cli.CONFIG_DIR, config_name="pretrain")
@cli.reports_errors
def main(cfg: DictConfig) -> None:
    """Entry point of ``python -m lora_lab.pretrain [overrides]``."""
    cli.quiet_libraries()
    threads.apply()
    pretrain_cfg = OmegaConf.to_object(cfg)
    assert isinstance(pretrain_cfg, PretrainConfig)
    pretrainer = Pretrainer(pretrain_cfg)
    pretrainer.setup()
    summary = pretrainer.run()
    print(
        f"wrote {pretrainer.output_dir} ({summary['parameters']:,} parameters, {summary['steps']} steps, "
        f"{summary['train_time_s']} s): held-out task A exact match {summary['taskA_exact_match']:.3f}, "
        f"eval loss {summary['taskA_eval_loss']:.4f}"
    )


if __name__ == "__main__":
    sys.argv[1:] = cli.flags_first(sys.argv[1:])
    main()
