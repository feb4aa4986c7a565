"""Whose fault a failed trial is: its configuration's, or the environment's.

A failure caused by the configuration (a NaN loss, a value the model refuses, out of memory at that
size) is the configuration's result: the study keeps it and never runs that slot again. A failure of
the environment (a missing file, a model or service that cannot be reached, no space left, no
permission) says nothing about the configuration: the trial ends with ``lora_lab.outcome=environment``,
its slot stays open, the sweep stops and exits non-zero naming the cause, and the same command runs
it once the cause is fixed. docs/faults.md tells users which is which.
"""

from __future__ import annotations

import errno

from lora_lab.errors import DataError, LoraLabError, ModelUnavailableError, UnreachableError

EXIT_ENVIRONMENT = 3
"""Exit code of a sweep stopped by a failure of its environment (2 is bad input, 130 an interruption)."""

_OS_CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOENT: "a file or folder is missing",
    errno.EIO: "input/output error",
}


class EnvironmentFailure(LoraLabError):
    """A trial could not run for a reason outside its configuration; its slot stays open."""

    exit_code = EXIT_ENVIRONMENT


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` comes from a full disk (or a quota reached)."""
    return any(isinstance(link, OSError) and link.errno in (errno.ENOSPC, errno.EDQUOT) for link in _chain(exc))


def environment_cause(exc: BaseException) -> str | None:
    """What in the environment made ``exc`` happen ('no space left on the device', 'the model or data
    cannot be loaded', ...), or None when it is the configuration's own failure."""
    for link in _chain(exc):
        if isinstance(link, MemoryError):
            return None  # out of memory at this size: the configuration's result
        if isinstance(link, (ModelUnavailableError, DataError)):
            return "the model or data cannot be loaded"
        if isinstance(link, UnreachableError):
            return "a service cannot be reached"
        if isinstance(link, (ConnectionError, TimeoutError)):
            return "a service cannot be reached"
        if isinstance(link, OSError):
            if link.errno in _OS_CAUSES:
                return _OS_CAUSES[link.errno]
            if isinstance(link, (FileNotFoundError, PermissionError)):
                return "a file is missing or not accessible"
        if type(link).__module__.startswith(("sqlalchemy", "requests", "urllib3", "huggingface_hub")):
            if "Error" in type(link).__name__ and not isinstance(link, ValueError):
                return "a service or file cannot be reached"
        if isinstance(link, LoraLabError) and not isinstance(link, EnvironmentFailure):
            return None  # lora_lab's own verdicts on a configuration (ConfigError, TrialFailedError)
    return None
