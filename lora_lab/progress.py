"""Live sweep display: trial n of N, best so far, and the running trial's step and loss (rich)."""

from __future__ import annotations

import math
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from transformers import TrainerCallback


class SweepProgress:
    """A rich Live panel above which one line per finished trial is printed."""

    def __init__(self, study_name: str, total: int, enabled: bool = True):
        self.study_name = study_name
        self.total = total
        self.done = 0
        self.best: float | None = None
        self.enabled = enabled
        self.console = Console(stderr=False)
        self.live: Live | None = None
        self.current: dict[str, Any] = {}
        self.started = 0.0

    def __enter__(self) -> SweepProgress:
        if self.enabled:
            self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)
            self.live = None

    def _render(self) -> Table:
        table = Table.grid(padding=(0, 2))
        best = "-" if self.best is None else f"{self.best:.4g}"
        table.add_row(f"[bold]{self.study_name}[/]", f"trials {self.done}/{self.total}", f"best {best}")
        if self.current:
            step = self.current.get("step", 0)
            loss = self.current.get("loss")
            loss_text = "-" if loss is None else f"{loss:.4f}"
            table.add_row(
                f"trial {self.current['number']}",
                f"step {step}/{self.current.get('max_steps', '?')}",
                f"loss {loss_text}",
                self.current.get("label", ""),
            )
        return table

    def _refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._render())

    def set_done(self, done: int, best: float | None) -> None:
        """Finished trials so far and the best objective value."""
        self.done, self.best = done, best
        self._refresh()

    def start_trial(self, number: int, values: dict[str, Any]) -> None:
        """A trial begins with these sampled values."""
        label = " ".join(
            f"{k.rsplit('.', 1)[-1]}={v:g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}"
            for k, v in values.items()
        )
        self.current = {"number": number, "label": label, "step": 0}
        self.started = time.perf_counter()
        self._refresh()

    def end_trial(self, number: int, state: str, error: BaseException | None) -> None:
        """Print the finished trial's line (kept in the scroll-back, unlike the live panel)."""
        elapsed = time.perf_counter() - self.started
        loss = self.current.get("eval_loss")
        detail = f"eval_loss {loss:.4f}" if loss is not None and math.isfinite(loss) else ""
        if state == "FAIL" and error is not None:
            detail = f"{type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}"
        colour = {"COMPLETE": "green", "PRUNED": "yellow"}.get(state, "red")
        if self.enabled:
            self.console.print(
                f"trial {number:>4} [{colour}]{state:<8}[/] {elapsed:6.1f}s  {self.current.get('label', '')}  {detail}",
                highlight=False,
                soft_wrap=True,
            )
        self.current = {}
        self._refresh()

    def trainer_callback(self) -> TrainerCallback:
        """A Trainer callback that feeds the running trial's step and loss into the panel."""
        progress = self

        class _Feed(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                progress.current["step"] = state.global_step
                progress.current["max_steps"] = state.max_steps
                progress._refresh()

            def on_log(self, args, state, control, logs=None, **kwargs):
                logs = logs or {}
                if "loss" in logs:
                    progress.current["loss"] = logs["loss"]
                if "eval_loss" in logs:
                    progress.current["eval_loss"] = logs["eval_loss"]
                progress._refresh()

        return _Feed()
