"""The LoRA adapter on a base model: which modules it wraps, PEFT's config, attaching, detaching, saving.

PEFT is imported where it is used (see ``lora_lab.cli.skip_bitsandbytes``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from huggingface_hub import ModelCard, ModelCardData
from transformers import PreTrainedModel

from lora_lab import names
from lora_lab.config import LoraSettings, ModelConfig, TrialConfig
from lora_lab.model import targets

if TYPE_CHECKING:
    from peft import LoraConfig, PeftModel


def resolve_target_modules(model: torch.nn.Module, lora: LoraSettings, model_cfg: ModelConfig) -> list[str]:
    """Module names the adapter wraps: the explicit ``lora.target_modules``, or the named set
    ``lora.targets`` as this model's layers express it (see ``lora_lab.model.targets``)."""
    return targets.for_trial(model, lora, model_cfg).modules


def lora_config(lora: LoraSettings, target_set: targets.TargetSet) -> LoraConfig:
    """PEFT's LoraConfig for these settings on a resolved target set."""
    from peft import LoraConfig

    init = {"true": True, "false": False}.get(lora.init_lora_weights, lora.init_lora_weights)
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.lora_dropout,
        bias=lora.bias,
        target_modules=target_set.peft_targets,
        fan_in_fan_out=target_set.fan_in_fan_out,
        use_rslora=lora.use_rslora,
        use_dora=lora.use_dora,
        init_lora_weights=init,
        task_type="CAUSAL_LM",
    )


def attach_adapter(base: PreTrainedModel, lora: LoraSettings, model_cfg: ModelConfig) -> PeftModel:
    """Wrap the base model with a fresh LoRA adapter; only the adapter's weights are trainable."""
    from peft import get_peft_model

    return get_peft_model(base, lora_config(lora, targets.for_trial(base, lora, model_cfg)))


def detach_adapter(peft_model: PeftModel) -> PreTrainedModel:
    """Remove the adapter and give back the untouched base model, ready for the next trial."""
    base = peft_model.unload()
    for param in base.parameters():
        param.requires_grad_(False)
    return base


@functools.cache
def _blank_model_card() -> str:
    """The model card huggingface_hub renders from its default template: PEFT's starting card."""
    return str(ModelCard.from_template(ModelCardData()))


def save_adapter(
    peft_model: PeftModel, directory: str | Path, base_model: str | None = None, trial: TrialConfig | None = None
) -> None:
    """Save the adapter with PEFT's ``save_pretrained`` (weights, adapter_config.json, README.md).

    ``base_model`` (see ``base_model_id``) is written as the adapter's ``base_model_name_or_path``
    instead of the directory the base was loaded from on this machine. ``trial``'s model, quant and
    lora settings go to ``names.ADAPTER_TRIAL_FILE`` beside it: what ``lora_lab.export`` merges into.

    PEFT starts the model card from huggingface_hub's template, which it compiles anew at every save
    (a large part of saving a small adapter); it updates an existing README.md instead, so the card
    rendered once per process is put there first: the saved files are the same."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    readme = directory / "README.md"
    if not readme.exists():
        readme.write_text(_blank_model_card(), encoding="utf-8")
    peft_model.save_pretrained(str(directory))
    if base_model:
        # rewritten after saving, not set before: PEFT looks the base model's config up at its
        # name_or_path while saving (a Hub request for an id that is not a local directory)
        config_file = directory / "adapter_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        loaded_from = config.get("base_model_name_or_path")
        config["base_model_name_or_path"] = base_model
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
        if loaded_from and loaded_from != base_model:
            card = readme.read_text(encoding="utf-8")
            readme.write_text(card.replace(loaded_from, base_model), encoding="utf-8")
    if trial is not None:
        settings = {group: dataclasses.asdict(getattr(trial, group)) for group in ("model", "quant", "lora")}
        (directory / names.ADAPTER_TRIAL_FILE).write_text(json.dumps(settings, indent=2), encoding="utf-8")
