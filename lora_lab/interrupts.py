"""Signals during a sweep: SIGINT and SIGTERM become a KeyboardInterrupt at a safe point.

One job: a sweep worker is stopped (Ctrl-C, SLURM preemption, ``kill``) without cutting a storage
write in half, and a KeyboardInterrupt that Python swallows (inside a finalizer or a weakref
callback) is kept pending instead of printed as a traceback. ``INTERRUPTS`` is the process's one
instance; ``python -m lora_lab.sweep`` installs it.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator

from transformers import TrainerCallback


class Interrupts:
    """SIGINT and SIGTERM (SLURM preemption, ``kill``) as KeyboardInterrupt: raised at once while a
    trial trains, and at the next safe point otherwise, so a storage write is never cut in half.
    A second signal while one is pending raises at once."""

    def __init__(self) -> None:
        self.pending: int | None = None
        self.interruptible = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)
        if not getattr(sys.unraisablehook, "lora_lab_interrupts", False):
            sys.unraisablehook = self._unraisable_hook(sys.unraisablehook)

    def _unraisable_hook(self, previous):
        """Python swallows an exception raised inside a weakref callback, finalizer or GC callback and
        prints it with its traceback ("Exception ignored in ..."). A KeyboardInterrupt of ours swallowed
        there is kept pending and raised at the next safe point, so that print would only alarm: it is
        left out; any other exception goes to the previous hook."""

        def hook(unraisable) -> None:
            if isinstance(unraisable.exc_value, KeyboardInterrupt) and self.pending is not None:
                return
            previous(unraisable)

        hook.lora_lab_interrupts = True
        return hook

    def _handle(self, signum, frame) -> None:
        forced = self.pending is not None
        self.pending = signum  # kept: a raise inside a finalizer or weakref callback is swallowed by Python
        if self.interruptible or forced:
            self.interruptible = False
            raise KeyboardInterrupt(f"signal {signum}")

    def checkpoint(self) -> None:
        """Raise a signal that arrived while it had to wait."""
        if self.pending is not None:
            signum, self.pending = self.pending, None
            raise KeyboardInterrupt(f"signal {signum}")

    def trainer_callback(self) -> TrainerCallback:
        """Raises a signal whose KeyboardInterrupt was swallowed at the next optimizer step."""
        interrupts = self

        class _Check(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                interrupts.checkpoint()

        return _Check()

    @contextlib.contextmanager
    def allowed(self) -> Iterator[None]:
        """A stretch (training) that a signal may cut short at any point."""
        self.checkpoint()
        self.interruptible = True
        try:
            yield
        finally:
            self.interruptible = False


INTERRUPTS = Interrupts()
