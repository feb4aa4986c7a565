"""Base model and LoRA adapter, split as PEFT splits its tuners.

- ``lora_lab.model.base``: the tokenizer, loading (shipped, built-in or Hub/local checkpoint),
  quantization, and the guard that a base shared by a sweep's trials stays as it was loaded.
- ``lora_lab.model.targets``: what each named target set (qv, attn, mlp, all_linear) adapts on a
  given architecture, read from the model's own layers (or from its config alone, on the meta device).
- ``lora_lab.model.adapter``: PEFT's ``LoraConfig``, attaching, detaching and saving the adapter.

The names below are re-exported so ``from lora_lab.model import load_base_model`` keeps working.
"""

from lora_lab.model.adapter import (
    attach_adapter,
    detach_adapter,
    lora_config,
    resolve_target_modules,
    save_adapter,
)
from lora_lab.model.base import (
    ASSETS_DIR,
    base_for_trial,
    base_model_id,
    base_writes,
    bf16_by_default,
    bnb_config,
    builtin_tokenizer,
    cache_dir,
    device,
    fingerprint,
    hub_reachable,
    keep_4bit_layout,
    load_base_model,
    load_tokenizer,
    materialize_builtin,
    package_model_dir,
    resolve_dtype,
    trial_base,
)

__all__ = [
    "ASSETS_DIR",
    "attach_adapter",
    "base_for_trial",
    "base_model_id",
    "base_writes",
    "bf16_by_default",
    "bnb_config",
    "builtin_tokenizer",
    "cache_dir",
    "detach_adapter",
    "device",
    "fingerprint",
    "hub_reachable",
    "keep_4bit_layout",
    "load_base_model",
    "load_tokenizer",
    "lora_config",
    "materialize_builtin",
    "package_model_dir",
    "resolve_dtype",
    "resolve_target_modules",
    "save_adapter",
    "trial_base",
]
