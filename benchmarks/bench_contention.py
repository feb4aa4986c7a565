"""A trial beside another CPU-bound process: lora_lab's thread policy against the stock settings.

lora_lab sets ``OMP_WAIT_POLICY=PASSIVE`` before torch loads and gives torch the cores the process owns
(``lora_lab.threads``). "Stock" is what a process gets without that policy (``LORA_LAB_THREAD_POLICY=off``:
OMP_WAIT_POLICY unset, so OpenMP's threads spin while they wait, and torch's default thread count).

Each side is a long-lived trial process (``--serve``: it builds the model and data once, runs one
untimed warm-up trial, then times one whole ``lora_lab.train.run_trial`` per request: training,
evaluation, task A scores) started with that side's environment. Neighbours run all the time but are
held stopped (SIGSTOP) except while a measurement needs them (SIGCONT), so no process start or import
lies inside a measurement:

* ``trial``: another lora_lab trial process under the same settings as the measured one (the policy
  beside the policy, stock beside stock), running trials back to back;
* ``matmul``: a plain torch matrix-multiplication loop with torch's stock settings (a user's other job,
  which lora_lab's policy cannot change).

Every round measures, in a shuffled order: each side alone, the policy side alone a second time (the
A/A series: the noise floor of a ratio), and each side beside each neighbour. A ratio is the median
over rounds of (beside / alone of the same side in the same round), with a 95 % bootstrap CI over
rounds. Goal: beside one other process on 2 cores, a trial takes at most 2.5x its time alone (a fair
share of 2 cores is 2x).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, Machine, fmt, median, ratio_ci, table, write_report  # noqa: E402

GOAL = 2.5
THREAD_VARS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "LORA_LAB_THREAD_POLICY")
MATMUL = """
import sys, torch
a = torch.randn(512, 512); b = torch.randn(512, 512)
for _ in range(3): a @ b
print("ready", flush=True)
while True:
    for _ in range(50): a @ b
"""


def side_env(side: str) -> dict[str, str]:
    """The environment of a process on ``side`` (policy or stock): the caller's, without any thread setting."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS and k != "LORA_LAB_SET_OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(REPO)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    if side == "stock":
        env["LORA_LAB_THREAD_POLICY"] = "off"
    return env


# -- the trial process ---------------------------------------------------------------------------------------
def serve(steps: int, loop: bool) -> None:
    """Build once, warm up, then time one trial per 'run' line on stdin (or, with ``loop``, run trials
    back to back for ever: a neighbour)."""
    import importlib
    import tempfile

    sys.path.insert(0, str(REPO))
    importlib.import_module("lora_lab")  # first: the package sets the wait policy before anything loads torch
    from _common import quiet

    quiet()
    from hydra import compose, initialize_config_dir

    from lora_lab import threads
    from lora_lab.config import register_configs, to_trial_config
    from lora_lab.train import build_resources, run_trial

    applied = threads.apply()  # what a lora_lab entry point does (a no-op for the stock side: policy off)
    register_configs()
    overrides = [
        f"train.max_steps={steps}",
        f"train.eval_every={steps}",
        "train.eval_generate=0",
        "train.save_adapter=false",
        "tracking.enabled=false",
    ]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = to_trial_config(compose("config", overrides=overrides))
    resources = build_resources(cfg)
    out = Path(tempfile.mkdtemp(prefix="lora_lab_contention_"))
    run_trial(cfg, out / "warmup", resources, show_progress=False)
    print(json.dumps({"ready": True, "threads": applied.threads, "wait": applied.wait_policy}), flush=True)
    n = 0
    while True:
        if not loop and not sys.stdin.readline():
            return
        n += 1
        started = time.perf_counter()
        run_trial(cfg, out / f"t{n % 2}", resources, show_progress=False)
        if not loop:
            print(json.dumps({"seconds": time.perf_counter() - started}), flush=True)


# -- the driver ----------------------------------------------------------------------------------------------
class Proc:
    """A child process that prints one JSON line when ready (and one per answered request)."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str]):
        self.name = name
        self.proc = subprocess.Popen(
            cmd, env=env, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.err: list[str] = []
        threading.Thread(target=lambda: self.err.extend(self.proc.stderr), daemon=True).start()

    def line(self) -> str:
        text = self.proc.stdout.readline()
        if not text:
            raise SystemExit(f"{self.name} exited ({self.proc.wait()}):\n" + "".join(self.err)[-4000:])
        return text

    def request(self) -> float:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return float(json.loads(self.line())["seconds"])

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each measures every series once")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps of the measured trial")
    parser.add_argument(
        "--settle", type=float, default=1.0, help="seconds a resumed neighbour runs before a measurement"
    )
    parser.add_argument("--no-report", action="store_true", help="print only; do not write the results file")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--loop", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.steps, args.loop)
        return

    me = [sys.executable, str(Path(__file__).resolve()), "--serve", "--steps", str(args.steps)]
    machine = Machine()
    procs = {
        "policy": Proc("policy trial", me, side_env("policy")),
        "stock": Proc("stock trial", me, side_env("stock")),
        "trial/policy": Proc("neighbour trial (policy)", [*me, "--loop"], side_env("policy")),
        "trial/stock": Proc("neighbour trial (stock)", [*me, "--loop"], side_env("stock")),
        "matmul": Proc("neighbour matmul loop (stock torch)", [sys.executable, "-c", MATMUL], side_env("stock")),
    }
    try:
        settings = {}
        for key, proc in procs.items():  # started together; each neighbour is held stopped once it is ready
            first = proc.line()
            if key.startswith(("trial/", "matmul")):
                proc.signal(signal.SIGSTOP)
            if key in ("policy", "stock"):
                settings[key] = json.loads(first)
        series = ["alone", "alone (A/A)", "beside trial", "beside matmul"]
        jobs = [(side, s) for side in ("policy", "stock") for s in series if not (side == "stock" and "A/A" in s)]
        times: dict[tuple[str, str], list[float]] = {job: [] for job in jobs}
        for round_ in range(args.rounds):
            order = list(jobs)
            random.Random(round_).shuffle(order)
            for side, what in order:
                neighbour = None
                if what == "beside trial":
                    neighbour = procs[f"trial/{side}"]
                elif what == "beside matmul":
                    neighbour = procs["matmul"]
                if neighbour is not None:
                    neighbour.signal(signal.SIGCONT)
                    time.sleep(args.settle)
                try:
                    times[(side, what)].append(procs[side].request())
                finally:
                    if neighbour is not None:
                        neighbour.signal(signal.SIGSTOP)
            print(
                f"round {round_ + 1}/{args.rounds}: "
                + ", ".join(f"{side} {what} {v[-1]:.1f}s" for (side, what), v in times.items()),
                flush=True,
            )
    finally:
        for proc in procs.values():
            proc.close()
    machine.finish()

    rows = []
    results = {}
    for side, what in jobs:
        alone = times[(side, "alone")]
        values = times[(side, what)]
        if what == "alone":
            ratio, low, high = 1.0, float("nan"), float("nan")
        else:
            ratio, low, high = ratio_ci([v / a for v, a in zip(values, alone, strict=True)])
        results[(side, what)] = ratio
        interval = f"[{fmt(low)}, {fmt(high)}]" if low == low else ""
        rows.append([side, what, fmt(median(values)), fmt(min(values)), fmt(max(values)), fmt(ratio), interval])
    verdict = []
    for neighbour in ("trial", "matmul"):
        policy, stock = results[("policy", f"beside {neighbour}")], results[("stock", f"beside {neighbour}")]
        met = "met" if policy <= GOAL else "NOT met"
        verdict.append(
            f"- beside a {neighbour} neighbour: **{fmt(policy)}x** its time alone with lora_lab's policy "
            f"(goal <= {GOAL}x: {met}); stock settings: {fmt(stock)}x."
        )
    alone_ratio, alone_low, alone_high = ratio_ci(
        [p / s for p, s in zip(times[("policy", "alone")], times[("stock", "alone")], strict=True)]
    )
    verdict.append(
        f"- alone, the policy side against the stock side (same round): {fmt(alone_ratio)}x"
        + (f" [{fmt(alone_low)}, {fmt(alone_high)}]" if alone_low == alone_low else "")
        + " (above 1: passive waiting costs a trial that has the cores to itself)."
    )
    cores = os.cpu_count()
    body = [
        f"{args.rounds} rounds on {cores} cores; the measured unit is one whole `run_trial` of the default "
        f"config with train.max_steps={args.steps} (training, one evaluation, task A scores; no generation, "
        "no adapter saved, no MLflow), timed inside a long-lived process after a warm-up trial.",
        f"Settings in force: policy side {settings['policy'].get('threads')} torch threads, OMP_WAIT_POLICY "
        f"{settings['policy'].get('wait')}; stock side {settings['stock'].get('threads')} threads, OMP_WAIT_POLICY "
        f"{settings['stock'].get('wait')}. The matmul neighbour (512x512, torch's stock settings) and the trial "
        "neighbour (same settings as the measured side) run only during their series (SIGCONT, "
        f"{args.settle:g} s to settle, then the measurement, then SIGSTOP).",
        "Ratio: median over rounds of (series / the same side alone in the same round); interval: 95 % "
        "bootstrap CI over rounds. `alone (A/A)`: the policy side alone as a second series, the noise floor.",
        "",
        *table(["side", "series", "median s", "min s", "max s", "ratio to alone", "95 % CI"], rows),
        "",
        *verdict,
    ]
    print("\n".join(body))
    if not args.no_report:
        write_report(
            "contention", "A trial beside another CPU-bound process: thread policy against stock", machine, body
        )


if __name__ == "__main__":
    main()
