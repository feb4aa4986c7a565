"""``lora_lab.export``: a trained adapter merged into its base is a standalone model that computes what
the adapter model computed; an adapter trained on a quantized base merges only dequantized."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lora_lab import names
from lora_lab.config import ExportConfig
from lora_lab.errors import ConfigError
from lora_lab.export import Exporter
from lora_lab.train import run_trial

TRAIN = (
    "data.n_train=64",
    "data.n_eval=16",
    "train.max_steps=3",
    "train.batch_size=16",
    "train.eval_every=3",
    "train.eval_generate=0",
    "train.learning_rate=2e-2",
    "tracking.enabled=false",
    "lora.r=4",
)


@pytest.fixture(scope="module")
def trained(make_trial_config, tmp_path_factory):
    """Adapters trained on the shipped base, unquantized and NF4 (QLoRA), each with its trial's settings."""
    out = {}
    for quant in ("none", "nf4"):
        cfg = make_trial_config(*TRAIN, f"quant={quant}")
        result = run_trial(cfg, tmp_path_factory.mktemp(f"trial_{quant}"), show_progress=False)
        out[quant] = result.adapter_dir
    return out


def logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(["<s>2hello:", "<s>0abcdef:"], return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        return model(**batch).logits.float()


def test_the_merged_model_computes_what_the_adapter_model_computed(trained, tmp_path):
    settings = json.loads((Path(trained["none"]) / names.ADAPTER_TRIAL_FILE).read_text())
    assert settings["model"]["name"] == "tiny_llama" and settings["quant"]["method"] == "none"
    exporter = Exporter(ExportConfig(adapter=trained["none"], output_dir=str(tmp_path / "merged")))
    exporter.setup()
    tokenizer = exporter.tokenizer
    with_adapter = logits(exporter.peft_model, tokenizer)
    with exporter.peft_model.disable_adapter():
        base_only = logits(exporter.peft_model, tokenizer)
    assert (with_adapter - base_only).abs().max() > 1e-2  # the adapter changes the model: a merge has work to do
    target = exporter.run()
    assert not list(tmp_path.glob(".merged.partial-*"))
    merged = AutoModelForCausalLM.from_pretrained(target, local_files_only=True)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    reloaded_tokenizer = AutoTokenizer.from_pretrained(target, local_files_only=True)
    assert reloaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    torch.testing.assert_close(logits(merged, reloaded_tokenizer), with_adapter, atol=1e-4, rtol=1e-4)


def test_a_qlora_adapter_is_refused_unless_dequantized(trained, tmp_path):
    refused = Exporter(ExportConfig(adapter=trained["nf4"], output_dir=str(tmp_path / "merged")))
    with pytest.raises(ConfigError) as info:
        refused.setup()
    assert info.value.field == "dequantize" and "quant.method=nf4" in str(info.value)
    assert not (tmp_path / "merged").exists()
    exporter = Exporter(ExportConfig(adapter=trained["nf4"], output_dir=str(tmp_path / "merged"), dequantize=True))
    exporter.setup()
    assert not any(type(m).__name__ == "Linear4bit" for m in exporter.peft_model.modules())
    with_adapter = logits(exporter.peft_model, exporter.tokenizer)
    merged = AutoModelForCausalLM.from_pretrained(exporter.run(), local_files_only=True)
    assert getattr(merged.config, "quantization_config", None) is None
    # the dequantized 4-bit weights are the ones the adapter trained against: the same function
    torch.testing.assert_close(logits(merged, exporter.tokenizer), with_adapter, atol=1e-4, rtol=1e-4)


def test_base_points_at_a_base_that_moved(trained, tmp_path):
    """base=<dir>: the same weights loaded from another directory (here the shipped base's files)."""
    from lora_lab.model.base import ASSETS_DIR

    moved = Exporter(
        ExportConfig(adapter=trained["none"], output_dir=str(tmp_path / "m"), base=str(ASSETS_DIR / "tiny_llama"))
    )
    moved.setup()
    assert moved.model_cfg.source == "hub" and moved.model_cfg.pretrained == str(ASSETS_DIR / "tiny_llama")
    same = Exporter(ExportConfig(adapter=trained["none"], output_dir=str(tmp_path / "n")))
    same.setup()
    torch.testing.assert_close(logits(moved.peft_model, moved.tokenizer), logits(same.peft_model, same.tokenizer))


def test_export_refuses_what_it_cannot_do_cleanly(trained, tmp_path):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="'output_dir'.*does not exist yet"):
        Exporter(ExportConfig(adapter=trained["none"], output_dir=str(occupied))).setup()
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]
    with pytest.raises(ConfigError, match="'adapter'.*adapter_config.json"):
        Exporter(ExportConfig(adapter=str(tmp_path), output_dir=str(tmp_path / "m"))).setup()


@pytest.mark.slow
def test_the_export_command(trained, tmp_path):
    """The real command: a merged model written, and a refusal as one paragraph with exit 2."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = [sys.executable, "-m", "lora_lab.export", f"adapter={trained['none']}"]
    done = subprocess.run([*run, "output_dir=merged"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "merged model: merged" in done.stdout and (tmp_path / "merged" / "config.json").is_file()
    refused = subprocess.run(
        [sys.executable, "-m", "lora_lab.export", f"adapter={trained['nf4']}", "output_dir=m2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith("lora_lab: error: Invalid value for 'dequantize'")
    assert not (tmp_path / "m2").exists()
