"""A pruned trial skips the work only a finished trial's results use: exact-match generation and
saving the adapter (``run_trial(..., pruned=...)``, which the sweep passes when it prunes)."""

from __future__ import annotations

import math
from pathlib import Path

from lora_lab.train import build_resources, run_trial

TINY = (
    "data.n_train=96",
    "data.n_eval=16",
    "train.batch_size=16",
    "train.max_steps=4",
    "train.eval_every=2",
    "train.eval_generate=4",
    "train.logging_steps=2",
)


def test_pruned_trial_skips_generation_and_adapter_saving(make_trial_config, tmp_path):
    cfg = make_trial_config(*TINY)
    resources = build_resources(cfg)
    finished = run_trial(cfg, tmp_path / "finished", resources, show_progress=False, pruned=lambda: False)
    pruned = run_trial(cfg, tmp_path / "pruned", resources, show_progress=False, pruned=lambda: True)
    assert finished.adapter_dir is not None and (Path(finished.adapter_dir) / "adapter_config.json").is_file()
    assert math.isfinite(finished.exact_match)
    assert pruned.adapter_dir is None and not (tmp_path / "pruned" / "adapter").exists()
    assert math.isnan(pruned.exact_match)
    assert pruned.eval_loss == finished.eval_loss  # the same training: only what comes after it differs
