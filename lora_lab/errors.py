"""Errors that lora_lab reports to users as one clear paragraph, with no stack trace."""

from __future__ import annotations


class LoraLabError(Exception):
    """A user-facing error: the message names what was wrong and what is allowed."""

    exit_code = 2


class ConfigError(LoraLabError):
    """A config field holds a value outside its allowed set or range."""

    def __init__(self, field: str, value: object, allowed: str):
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"Invalid value for '{field}': {value!r}. Allowed: {allowed}.")


class DataError(LoraLabError):
    """A data source is missing, unreadable or malformed."""


class ModelUnavailableError(LoraLabError):
    """A model or tokenizer cannot be loaded (typically: a hub model while offline)."""


class TrialFailedError(LoraLabError):
    """A trial ran but produced an unusable result (for example a NaN loss)."""


class UnreachableError(LoraLabError):
    """A service a setting points at (a database, a tracking server) does not answer."""

    def __init__(self, field: str, value: object, reason: str, hint: str):
        self.field = field
        self.value = value
        super().__init__(f"Cannot reach '{field}': {value!r} ({reason}). {hint}")


class BaseModelChangedError(LoraLabError):
    """The base model that trials share was changed by a trial: later trials would adapt a
    different model than the one their saved adapters claim."""
