"""Merge a trained adapter into its base model for use: ``python -m lora_lab.export adapter=<dir> output_dir=<dir>``.

The adapter's trial saved its model and quant settings beside it (``names.ADAPTER_TRIAL_FILE``), so the
base loads exactly as it did for training; PEFT's ``merge_and_unload`` then folds the update
``scale x B @ A`` into the base weights, and the merged model and its tokenizer are written as a
standalone model directory that ``AutoModelForCausalLM.from_pretrained`` loads without PEFT.

An adapter trained on a quantized base (QLoRA) is merged only with ``dequantize=true``: the 4-bit
weights are dequantized to the compute dtype first (transformers' ``dequantize``: the very weights
the adapter was trained against), so the merged model computes what the trained one did, at full
precision. Merging into the 4-bit weights themselves would re-quantize each sum, rounding most of
the adapter's small update away, so that is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from lora_lab import cli, names
from lora_lab.config import ExportConfig, ModelConfig, QuantConfig, register_configs
from lora_lab.errors import ConfigError


class Exporter:
    """One export: ``__init__`` reads the settings, ``setup()`` checks them and loads base and
    adapter, ``run()`` merges and writes the model directory."""

    def __init__(self, cfg: ExportConfig):
        self.cfg = cfg
        self.adapter = Path(cfg.adapter).expanduser()
        self.output = Path(cfg.output_dir).expanduser()
        self.model_cfg: ModelConfig | None = None
        self.quant: QuantConfig | None = None
        self.tokenizer = None
        self.peft_model = None

    def _trial_settings(self) -> dict:
        if not (self.adapter / "adapter_config.json").is_file():
            raise ConfigError(
                "adapter",
                self.cfg.adapter,
                "a directory holding a saved adapter (adapter_config.json), such as <run dir>/adapter of "
                "`python -m lora_lab.train` (outputs/<date>/<time>/adapter, or the hydra.run.dir you gave)",
            )
        settings_file = self.adapter / names.ADAPTER_TRIAL_FILE
        if not settings_file.is_file():
            raise ConfigError(
                "adapter",
                self.cfg.adapter,
                f"an adapter saved by lora_lab (it holds {names.ADAPTER_TRIAL_FILE}, the trial's model and "
                f"quant settings, which say what base to merge into); this one has none. Merge it with "
                f"PEFT directly: PeftModel.from_pretrained(base, adapter).merge_and_unload()",
            )
        return json.loads(settings_file.read_text(encoding="utf-8"))

    def setup(self) -> None:
        """Check the settings, then load the base as the trial did and the adapter on it."""
        settings = self._trial_settings()
        model_cfg = ModelConfig(**settings["model"])
        if self.cfg.base:
            model_cfg = dataclasses.replace(model_cfg, source="hub", pretrained=self.cfg.base)
        quant = QuantConfig(**settings["quant"])
        if quant.method != "none" and not self.cfg.dequantize:
            raise ConfigError(
                "dequantize",
                False,
                f"true for this adapter, trained on a quant.method={quant.method} base: merging into quantized "
                f"weights re-quantizes each sum and rounds most of the adapter's update away, so it is "
                f"refused. With dequantize=true the base's weights are dequantized first (exactly the "
                f"weights the adapter was trained against) and the merged model is written in "
                f"full precision ({model_cfg.name} at its unquantized size)",
            )
        if self.output.exists() and (not self.output.is_dir() or any(self.output.iterdir())):
            raise ConfigError(
                "output_dir",
                self.cfg.output_dir,
                "a directory that does not exist yet (or is empty): lora_lab.export never writes over files",
            )
        from peft import PeftModel

        from lora_lab.model.base import load_base_model, load_tokenizer

        self.model_cfg, self.quant = model_cfg, quant
        self.tokenizer = load_tokenizer(model_cfg)
        base = load_base_model(model_cfg, quant, self.tokenizer)
        if quant.method != "none":
            base = base.dequantize()
        self.peft_model = PeftModel.from_pretrained(base, str(self.adapter))

    def run(self) -> Path:
        """Merge, and write the model and tokenizer: to a staging directory first, renamed into place
        once complete, so ``output_dir`` never holds a partial model."""
        merged = self.peft_model.merge_and_unload()
        merged.config.use_cache = True  # loading turned it off for training; generation wants it
        self.output.parent.mkdir(parents=True, exist_ok=True)
        staging = self.output.parent / f".{self.output.name}.partial-{os.getpid()}"
        try:
            merged.save_pretrained(staging)
            self.tokenizer.save_pretrained(staging)
            staging.rename(self.output)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return self.output


register_configs()


@hydra.main(version_base=None, config_path=cli.CONFIG_DIR, config_name="export")
@cli.reports_errors
def main(cfg: DictConfig) -> None:
    """Entry point of ``python -m lora_lab.export``."""
    settings = OmegaConf.to_object(cfg)
    assert isinstance(settings, ExportConfig)
    cli.quiet_libraries(optuna_too=False)
    exporter = Exporter(settings)
    exporter.setup()
    target = exporter.run()
    print(f"merged model: {target} (load it with AutoModelForCausalLM.from_pretrained; no PEFT needed)")


if __name__ == "__main__":
    main()
