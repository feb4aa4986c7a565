"""lora_lab: experiment-tracked hyperparameter sweeps for LoRA and QLoRA fine-tuning."""

from lora_lab.quiet import drop_import_noise

drop_import_noise()  # before any submodule imports bitsandbytes, which logs at import time
