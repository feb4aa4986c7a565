#!/usr/bin/env bash
# Re-resolve lora_lab's dependencies to their newest releases, check them, and rewrite constraints.txt.
#
#   bash tools/update_constraints.sh                 # resolve, run the fast suite and bench_startup.py, rewrite
#   bash tools/update_constraints.sh --skip-bench    # without the start-up benchmark (~ the fast suite's time)
#
# What it does (docs/dependencies.md):
#   1. a fresh venv (a temporary directory), `pip install torch==$TORCH` then `pip install -e '.[dev]'`
#      WITHOUT constraints.txt: pip picks the newest releases that pyproject.toml's ranges allow;
#   2. `pip freeze` of that venv becomes the candidate file (lora_lab itself and any nvidia-*/CUDA
#      package left out; torch pinned without its local label, so the CPU wheel and a CUDA one both match);
#   3. the fast suite (README's test command) and benchmarks/bench_startup.py run in that venv;
#   4. only if the suite passed is constraints.txt replaced; `git diff constraints.txt` shows what moved.
# The benchmark prints its ratio to the import floor (goal <= 1.25x); it writes no results file here:
# commit one from a quiet machine with `python benchmarks/bench_startup.py` once the new versions are in.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
TORCH=${TORCH:-2.13.0}
BENCH=1
for arg in "$@"; do
  case "$arg" in
    --skip-bench) BENCH=0 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "update_constraints.sh: unknown argument '$arg' (allowed: --skip-bench, --help)" >&2; exit 2 ;;
  esac
done

WORK=$(mktemp -d -t lora_lab_constraints.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
echo "== fresh venv in $WORK: torch==$TORCH, then the newest releases pyproject.toml allows"
python3 -m venv "$WORK/venv"
# shellcheck disable=SC1091
. "$WORK/venv/bin/activate"
pip install -q "torch==$TORCH"
pip install -q -e '.[dev]'

CANDIDATE="$WORK/constraints.txt"
{
  echo "# Exact versions lora_lab is tested and benchmarked on (CI and README's commands install with them:"
  echo "#   pip install -c constraints.txt torch==$TORCH && pip install -c constraints.txt -e '.[dev]')."
  echo "# pyproject.toml keeps compatible ranges for installing lora_lab into an environment of your own."
  echo "# Written by tools/update_constraints.sh on $(date -u +%Y-%m-%d) (Python $(python -c 'import platform; print(platform.python_version())')); regenerate it with that script: docs/dependencies.md."
  echo "# torch is pinned without a local label (+cpu): the CPU wheel and a CUDA one both match it."
  pip freeze --exclude-editable \
    | grep -v -i -E '^(nvidia-|cuda-|triton==|lora[-_]lab)' \
    | sed -E 's/^(torch==[^+]+)\+.*/\1/' \
    | grep -v '^#' \
    | LC_ALL=C sort -f
} > "$CANDIDATE"

# the candidate goes in place for the checks (tests/test_constraints.py reads it); the old file comes back
# unless every check passed
cp constraints.txt "$WORK/constraints.before" 2>/dev/null || : > "$WORK/constraints.before"
KEEP=0
restore() { [ "$KEEP" = 1 ] || cp "$WORK/constraints.before" "$REPO/constraints.txt"; rm -rf "$WORK"; }
trap restore EXIT
cp "$CANDIDATE" "$REPO/constraints.txt"

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
echo "== fast suite on the candidate versions (load: $(uptime))"
python -m pytest -q -p no:cacheprovider -m "not slow and not slurm"
if [ "$BENCH" = 1 ]; then
  echo "== start-up on the candidate versions (bench_startup.py --runs 5, the user's default threads; load: $(uptime))"
  (unset OMP_NUM_THREADS OMP_WAIT_POLICY MKL_NUM_THREADS; python benchmarks/bench_startup.py --runs 5 --no-report)
fi
KEEP=1
echo "== constraints.txt rewritten; what moved:"
git --no-pager diff -U0 -- constraints.txt | grep -E '^[-+][^-+#]' || echo "(no version changed)"
