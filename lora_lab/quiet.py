"""Library chatter kept out of lora_lab's output: the one home of every log and warning setting.

``drop_import_noise`` runs when the ``lora_lab`` package is imported (before any model library is),
so messages that libraries log at import time are filtered at their own logger; ``quiet_libraries``
runs at the start of each command.
"""

from __future__ import annotations

import logging
import os
import warnings

BNB_CPU_OPS_LOGGER = "bitsandbytes.backends.cpu.ops"
"""The logger bitsandbytes' CPU backend writes to when its module is imported."""

BNB_KERNELS_MISSING = "Failed to load CPU gemm_4bit_forward from kernels-community"
"""Logged at every bitsandbytes import on CPUs with AVX512-BF16 when the optional ``kernels``
package is absent. That package downloads a fused kernel from the Hub at run time, which lora_lab
never does; bitsandbytes then uses its own CPU kernels, so the warning asks for nothing to be done."""


class _DropMessage(logging.Filter):
    """Drops the records of one logger whose message (format string) starts with a given text;
    every other record of that logger still gets through."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


_BNB_FILTER = _DropMessage(BNB_KERNELS_MISSING)


def drop_import_noise() -> None:
    """Filter the warnings libraries log at import that say nothing a lora_lab user can act on."""
    logging.getLogger(BNB_CPU_OPS_LOGGER).addFilter(_BNB_FILTER)  # adding one filter twice keeps one


def quiet_libraries(model_libraries: bool = True, optuna_too: bool = True) -> None:
    """Keep library chatter (hub lookups, deprecation notes, Optuna's per-trial lines) out of a
    command's output. ``model_libraries=False`` leaves transformers unimported (the report needs only
    MLflow and Optuna); ``optuna_too=False`` leaves Optuna unimported (a single trial never uses it)."""
    drop_import_noise()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # MLflow's sqlite store migrations
    warnings.filterwarnings("ignore", category=FutureWarning)
    if optuna_too:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials are reported by lora_lab itself
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if model_libraries:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        warnings.filterwarnings("ignore", category=UserWarning, module="torch")
