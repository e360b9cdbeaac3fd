#!/usr/bin/env bash
# Everything to check on a GPU machine in one go, in about 9 minutes, results under $OUT.
#
#     OUT=/some/folder bash benchmarks/gpu_session.sh
#
# Run from the repository root on a machine with a CUDA GPU and PyTorch installed.
# Wheels of the other dependencies (textual, ...) may be carried in .whl/; they and the
# project are installed into /tmp/site, with no index and no build isolation, so the
# machine needs no network. Each step has its own time limit so one that hangs leaves
# the others their time; every step's output goes to $OUT/NAME.log and its exit status
# to $OUT/status.txt.
set -u
OUT="${OUT:-$(pwd)/gpu-session}"
mkdir -p "$OUT"
SITE=/tmp/site
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
: > "$OUT/status.txt"

step() {  # step NAME SECONDS COMMAND...: run it under its own limit, log it, record its status
    local name="$1" limit="$2"
    shift 2
    local started=$SECONDS
    echo "== $name (limit ${limit}s): $*" | tee -a "$OUT/status.txt"
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    local note=""
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then note=" (timed out)"; fi
    echo "   $name: exit $rc$note after $((SECONDS - started))s" | tee -a "$OUT/status.txt"
    tail -n 5 "$OUT/$name.log"
}

{
    date -u
    nvidia-smi || true
    python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available(), 'gpus', torch.cuda.device_count(), \
[torch.cuda.get_device_name(i) + ' ' + str(torch.cuda.get_device_capability(i)) for i in range(torch.cuda.device_count())])"
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

mkdir -p "$SITE"
if compgen -G ".whl/*.whl" > /dev/null; then
    step install-wheels 90 pip install --no-index --no-deps --target "$SITE" .whl/*.whl
fi
step install-project 90 pip install --no-deps --no-build-isolation --target "$SITE" .

# The GPU tests (tests/test_cuda.py), one process: they share the GPU.
step pytest-cuda 150 python -m pytest -m cuda tests/test_cuda.py -o addopts="" -p no:cacheprovider -rs -v \
    --junitxml "$OUT/pytest-cuda.xml"
# Trains for real on the GPU: device names, interrupt and resume, NaN, live changes, torchrun.
step gpu-check 150 python benchmarks/gpu_check.py --device cuda --json "$OUT/gpu_check.json"
# The GPU rows of the speed table: the engine against a plain loop, and the speedrun preset.
step perf 230 python benchmarks/perf.py --repeat 1 --only engine,speedrun --json "$OUT/perf.json"

date -u >> "$OUT/status.txt"
cat "$OUT/status.txt"
