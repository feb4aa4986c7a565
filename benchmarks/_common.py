"""What every benchmark script shares: the machine description, load checks, timing helpers and
the markdown results file under reports/benchmarks/.

Benchmarks are not tests: they measure, print and write a results file; they assert nothing.
"""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
REPORTS = REPO / "reports" / "benchmarks"


def quiet() -> None:
    """Silence the libraries' progress bars and warnings so the benchmark output stays readable."""
    import logging
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore")
    import optuna
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("mlflow", "alembic", "sqlalchemy", "hydra", "peft", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)


THREADS_HELP = (
    "torch intra-op threads for both sides (default 1; 0 keeps torch's default of one per core). "
    "On a shared 2-core machine two OpenMP threads per process made each step of the tiny model "
    "10-40x slower and the run-to-run spread about 10x; one thread keeps the two sides comparable."
)


def set_threads(threads: int) -> None:
    """Give torch ``threads`` intra-op threads (0: leave torch's default)."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)


def command_line() -> str:
    """The exact command that ran this benchmark, relative to the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script_text = str(script.relative_to(REPO))
    except ValueError:
        script_text = str(script)
    python = Path(sys.executable)
    try:
        python_text = str(python.relative_to(REPO))
    except ValueError:
        python_text = "python"
    return " ".join([python_text, script_text, *(shlex.quote(no_machine_path(a)) for a in sys.argv[1:])])


def no_machine_path(arg: str) -> str:
    """An argument as committed results may show it: an absolute path of this machine (alone or after
    ``label=``) becomes ``<path>``, so no result file names a local directory."""
    label, sep, value = arg.rpartition("=")
    return f"{label}{sep}<path>" if value.startswith("/") else arg


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


def uptime_line() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except Exception:
        one, five, fifteen = load_average()
        return f"load average: {one:.2f}, {five:.2f}, {fifteen:.2f}"


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "lora_lab"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return rev + (" (lora_lab/ has uncommitted changes)" if dirty else "")
    except Exception:
        return "unknown"


class Machine:
    """The machine and the load on it, read at the start and at the end of a benchmark."""

    def __init__(self) -> None:
        import torch

        self.cpu = cpu_model()
        self.cores = os.cpu_count() or 0
        self.torch = torch.__version__
        self.threads = torch.get_num_threads()
        self.python = platform.python_version()
        self.started = datetime.now(timezone.utc)
        self.uptime_before = uptime_line()
        self.load_before = load_average()
        self.uptime_after = ""
        self.load_after = (float("nan"),) * 3

    def finish(self) -> None:
        self.uptime_after = uptime_line()
        self.load_after = load_average()

    @property
    def shared(self) -> bool:
        """Whether something else ran on the machine: a 1-minute load above what the benchmark itself
        adds (one per torch thread of its busy process) plus 0.75, at either end."""
        return max(self.load_before[0], self.load_after[0]) > self.threads + 0.75

    def markdown(self) -> list[str]:
        lines = [
            f"- machine: {self.cpu}, {self.cores} cores (torch intra-op threads: {self.threads}), Python {self.python}",
            f"- versions: {versions_text()}",
            f"- date: {self.started:%Y-%m-%d %H:%M} UTC; lora_lab revision {git_revision()}",
            f"- `uptime` before: `{self.uptime_before}`",
            f"- `uptime` after: `{self.uptime_after}`",
        ]
        if self.shared:
            lines.append(
                f"- **loaded machine**: the 1-minute load average exceeded the benchmark's own {self.threads} "
                "thread(s) by more than 0.75, so other processes were using the CPU during this run: absolute "
                "times are inflated and noisy; compare the ratios, measured side by side, not the seconds."
            )
        return lines


VERSIONED = ("torch", "transformers", "peft", "mlflow", "optuna", "bitsandbytes", "accelerate")
"""The libraries whose versions every results file records (their timings and behaviour depend on them)."""


def versions() -> dict[str, str]:
    """Installed versions of ``VERSIONED`` (from the installed distributions' metadata, no import)."""
    from importlib import metadata

    out = {}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def versions_text() -> str:
    return ", ".join(f"{name} {version}" for name, version in versions().items())


@contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    """``with stopwatch() as t: ...`` then ``t['s']`` holds the elapsed seconds."""
    out = {"s": float("nan")}
    started = time.perf_counter()
    try:
        yield out
    finally:
        out["s"] = time.perf_counter() - started


def median(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def ratio_ci(ratios: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Median of paired ratios (each measured side by side in one round) and its bootstrap confidence
    interval over rounds (scipy.stats.bootstrap, percentile method, fixed seed): (median, low, high).
    Fewer than 3 ratios give no interval (nan, nan)."""
    import numpy as np
    from scipy import stats

    values = np.array([r for r in ratios if r == r], dtype=float)
    if len(values) == 0:
        return (float("nan"),) * 3
    if len(values) < 3 or np.ptp(values) == 0:
        middle = float(np.median(values))
        return (middle, middle, middle) if len(values) >= 3 else (middle, float("nan"), float("nan"))
    ci = stats.bootstrap(
        (values,), np.median, confidence_level=confidence, n_resamples=2000, method="percentile", random_state=0
    ).confidence_interval
    return float(np.median(values)), float(ci.low), float(ci.high)


def ratio_text(ratios: list[float]) -> str:
    """``1.03 [0.97, 1.10]``: the median of paired ratios with its 95 % bootstrap CI (``ratio_ci``)."""
    middle, low, high = ratio_ci(ratios)
    if low != low:
        return f"{middle:.3f} (no CI: fewer than 3 rounds)"
    return f"{middle:.3f} [{low:.3f}, {high:.3f}]"


def fmt(value: float, digits: int = 3) -> str:
    if value is None or value != value:
        return "n/a"
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"


def table(header: list[str], rows: list[list[object]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def write_report(name: str, title: str, machine: Machine, body: list[str]) -> Path:
    """Write reports/benchmarks/<name>.md: title, exact command, machine, then the body."""
    REPORTS.mkdir(parents=True, exist_ok=True)
    path = REPORTS / f"{name}.md"
    lines = [f"# {title}", "", "Command (from the repository root):", "", "```bash", command_line(), "```", ""]
    lines += machine.markdown() + [""] + body
    path.write_text("\n".join(lines).rstrip() + "\n")
    print(f"\nresults written to {path.relative_to(REPO)}")
    return path


def run_child(script: str | Path, args: list[str]) -> dict:
    """Run ``python <script> <args> --child-out <file>`` in a fresh interpreter and return the JSON it
    wrote. Each side of a comparison runs in a process of its own, as a user would run it: no side
    inherits the other's imports, caches or garbage-collector state (lora_lab freezes its long-lived
    objects for the collector, which would otherwise speed up whatever runs after it in the process)."""
    import json

    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = Path(handle.name)
    try:
        proc = subprocess.run(
            [sys.executable, str(script), *args, "--child-out", str(out)], cwd=REPO, capture_output=True, text=True
        )
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
            raise SystemExit(f"benchmark child failed ({proc.returncode}): {script} {' '.join(args)}")
        return json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)


def write_child(path: str, result: dict) -> None:
    import json

    Path(path).write_text(json.dumps(result))


def loop_timer():
    """A Trainer callback that adds up the seconds spent in optimizer steps (on_step_begin to
    on_step_end: forward, backward, clipping, update) and in evaluations (the Trainer's eval_runtime).
    It only reads the clock, so it costs nothing measurable."""
    from transformers import TrainerCallback

    class LoopTimer(TrainerCallback):
        def __init__(self):
            self.steps_s = 0.0
            self.evals_s = 0.0
            self._started = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.steps_s += time.perf_counter() - self._started

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.evals_s += float((logs or {}).get("eval_runtime", 0.0))

    return LoopTimer()
