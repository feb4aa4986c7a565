"""What every entry point shares: clear errors instead of stack traces, and quiet libraries."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
import typing
import warnings

from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from lora_lab.config import TrialConfig
from lora_lab.errors import LoraLabError


def fail(message: str, code: int = 2) -> typing.NoReturn:
    """Print one error paragraph to stderr and exit non-zero."""
    print(f"lora_lab: error: {message}", file=sys.stderr)
    sys.exit(code)


def reports_errors(fn):
    """Turn lora_lab's user-facing errors (and missing mandatory config values) into a one-paragraph
    message and exit code 2; anything else is a bug and keeps its stack trace."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LoraLabError as exc:
            fail(str(exc), exc.exit_code)
        except MissingMandatoryValue as exc:
            fail(f"'{exc.full_key}' must be set (it is '???' in the chosen config); "
                 f"add {exc.full_key}=... to the command line.")
        except OmegaConfBaseException as exc:
            fail(f"invalid config: {str(exc).splitlines()[0]} (at '{getattr(exc, 'full_key', '?')}').")

    return wrapper


def _schema_fields(cls: type) -> dict[str, typing.Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def check_overrides(argv: list[str], root: type = TrialConfig) -> None:
    """Reject ``group.field=value`` overrides whose field does not exist, listing the fields that
    do; Hydra's own message for this names the key but not the alternatives."""
    groups = _schema_fields(root)
    for arg in argv:
        if arg.startswith(("-", "+", "~", "hydra.", "hydra/")) or "=" not in arg:
            continue
        key = arg.split("=", 1)[0]
        if "." not in key or "/" in key:
            continue
        group, name = key.split(".", 1)[0], key.split(".")[1]
        schema = groups.get(group)
        if schema is None or not dataclasses.is_dataclass(schema):
            continue
        fields = _schema_fields(schema)
        if name not in fields:
            fail(f"unknown field '{group}.{name}' in override '{arg}'. Fields of '{group}': "
                 f"{', '.join(fields)}.")


def flags_first(argv: list[str]) -> list[str]:
    """Move Hydra's --multirun/-m flag before the overrides, so the issue-style order
    ``+sweep=x --multirun hydra/launcher=local ...`` parses (Hydra's argparse rejects overrides after it)."""
    flags = [a for a in argv if a in ("--multirun", "-m")]
    return flags + [a for a in argv if a not in ("--multirun", "-m")]


def quiet_libraries() -> None:
    """Keep library chatter (hub lookups, deprecation notes) out of a sweep's output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials are reported by lora_lab itself
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    warnings.filterwarnings("ignore", category=FutureWarning)
