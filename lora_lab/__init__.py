"""lora_lab: experiment-tracked hyperparameter sweeps for LoRA and QLoRA fine-tuning."""

from lora_lab import threads
from lora_lab.quiet import drop_import_noise

threads.before_torch()  # OMP_WAIT_POLICY=PASSIVE unless set: read once, when torch loads OpenMP (lora_lab.threads)
drop_import_noise()  # before any submodule imports bitsandbytes, which logs at import time
