"""What every entry point shares: where the configs are, the command line as Hydra wants it, clear
errors instead of stack traces, and quiet libraries."""

from __future__ import annotations

import dataclasses
import functools
import shutil
import sys
import typing
from pathlib import Path

from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from lora_lab.config import TrialConfig
from lora_lab.errors import LoraLabError
from lora_lab.quiet import quiet_libraries  # noqa: F401  (re-exported: every command calls cli.quiet_libraries)


def _config_dir() -> str:
    package = Path(__file__).resolve().parent
    shipped = package / "conf"  # an installed wheel: the repo's conf/ ships inside the package
    return str(shipped if shipped.is_dir() else package.parent / "conf")  # a checkout or an editable install


CONFIG_DIR = _config_dir()
"""Absolute path of the shipped configs; every ``@hydra.main`` reads them from here, so a command runs
the same from any directory and from a wheel. Your own config groups go in a directory of your own,
added with ``--config-dir DIR`` or ``hydra.searchpath=[file://DIR]`` (see docs/configuration.md)."""


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
            drop_run_folder()
            fail(str(exc), exc.exit_code)
        except MissingMandatoryValue as exc:
            drop_run_folder()
            fail(
                f"'{exc.full_key}' must be set (it is '???' in the chosen config); "
                f"add {exc.full_key}=... to the command line."
            )
        except OmegaConfBaseException as exc:
            drop_run_folder()
            fail(f"invalid config: {str(exc).splitlines()[0]} (at '{getattr(exc, 'full_key', '?')}').")

    return wrapper


def drop_run_folder() -> None:
    """Hydra makes a command's run folder (outputs/<date>/<time>/) before the command starts. A command
    refused for bad input leaves nothing behind: the folder goes when it holds only Hydra's own files
    (its .hydra/ record and the job's log), and so do the folders above it that it leaves empty, up
    to the one the command ran in."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.RUN or not hydra_cfg.runtime.output_dir:
        return
    folder = Path(hydra_cfg.runtime.output_dir).resolve()
    own = {hydra_cfg.output_subdir or ".hydra", f"{hydra_cfg.job.name}.log"}
    if not folder.is_dir() or any(entry.name not in own for entry in folder.iterdir()):
        return
    shutil.rmtree(folder, ignore_errors=True)
    here = Path.cwd().resolve()
    parent = folder.parent
    while parent != here and here in parent.parents:
        try:
            parent.rmdir()  # only when empty
        except OSError:
            break
        parent = parent.parent


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
            fail(f"unknown field '{group}.{name}' in override '{arg}'. Fields of '{group}': {', '.join(fields)}.")


def hydra_argv(argv: list[str]) -> list[str]:
    """The command line as Hydra wants it: --multirun/-m first (see flags_first), and ``sweep=<preset>``
    read as ``+sweep=<preset>``: the root config leaves ``sweep`` out of its defaults, since only
    ``lora_lab.sweep`` uses it, so Hydra on its own would insist on the ``+``."""
    return [f"+{arg}" if arg.startswith("sweep=") else arg for arg in flags_first(argv)]


def redact_url(url: str) -> str:
    """A storage or tracking URL with any user and password replaced by ``***``, fit for printing and logging."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def flags_first(argv: list[str]) -> list[str]:
    """Move Hydra's --multirun/-m flag before the overrides, so the issue-style order
    ``+sweep=x --multirun hydra/launcher=local ...`` parses (Hydra's argparse rejects overrides after it)."""
    flags = [a for a in argv if a in ("--multirun", "-m")]
    return flags + [a for a in argv if a not in ("--multirun", "-m")]


def quantizes(cfg: typing.Any) -> bool:
    """Whether a composed config may load a quantized base model: its quant.method, or any sweep
    parameter, derived value or baseline that sets a quant.* field."""
    quant = cfg.get("quant")
    if quant is not None and quant.get("method", "none") != "none":
        return True
    sweep = cfg.get("sweep") or {}
    keys = [*(sweep.get("params") or {}), *(sweep.get("derived") or {})]
    keys += [key for baseline in (sweep.get("baselines") or []) for key in baseline]
    return any(str(key).startswith("quant.") for key in keys)


def skip_bitsandbytes(cfg: typing.Any) -> bool:
    """Keep bitsandbytes out of a process that never quantizes; True when it was kept out.

    PEFT imports bitsandbytes whenever it is installed (``peft.helpers`` tries it on import, plus a
    probe for optional CPU kernels: a visible share of start-up, ``benchmarks/bench_startup.py``),
    quantized model or not. For a config that
    quantizes nothing (``quantizes`` is False) the module is marked as not importable with the
    import system's documented ``sys.modules[name] = None`` before PEFT is first imported
    (lora_lab.model.adapter imports PEFT where it uses it); PEFT's ``is_bnb_available`` then answers False
    and its bitsandbytes layers are simply not defined, as when bitsandbytes is not installed.
    Only entry points call this, once their config is known; nothing happens once PEFT or
    bitsandbytes is already imported, nor in a multirun whose command line sets a quant field (its
    jobs may share this process and differ in quantization)."""
    if quantizes(cfg) or "peft" in sys.modules or "bitsandbytes" in sys.modules:
        return False
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if (
        HydraConfig.initialized()
        and HydraConfig.get().mode == RunMode.MULTIRUN
        and any(arg.lstrip("+~").startswith("quant") for arg in sys.argv[1:])
    ):
        return False
    sys.modules["bitsandbytes"] = None  # type: ignore[assignment]
    return True


def run_command(module: str) -> None:
    """Run ``python -m <module>``: Hydra composes the config first, then ``<module>`` is imported and
    its ``command(cfg)`` runs in the Hydra job.

    A command module calls this at its top, before its own imports, so that what the command imports
    can depend on the config: bitsandbytes stays out of a run that quantizes nothing
    (``skip_bitsandbytes``; transformers' Trainer imports PEFT, which imports bitsandbytes)."""
    import importlib

    import hydra

    from lora_lab.config import register_configs

    def task(cfg):
        skip_bitsandbytes(cfg)
        return importlib.import_module(module).command(cfg)

    task.__module__ = module  # Hydra names the job (and its log file) after the command's module
    register_configs()
    sys.argv[1:] = hydra_argv(sys.argv[1:])
    check_overrides(sys.argv[1:])
    hydra.main(version_base=None, config_path=CONFIG_DIR, config_name="config")(reports_errors(task))()
