#!/usr/bin/env bash
# The GPU checks of ae-jax in one prepared run of at most ~8 minutes on one GPU.
#
# Written for this workplace's device machines (an H100 / H200 image with JAX + CUDA, flax,
# optax, orbax-checkpoint, scikit-learn, matplotlib and pytest, no network), run from the
# repository root with the wheels of what that image lacks carried in .whl/:
#
#   here, once:   echo /.whl/ >> .git/info/exclude
#                 python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#                   --implementation cp --platform manylinux_2_28_x86_64 -d .whl \
#                   hydra-core==1.3.8 omegaconf==2.3.1 tensorboardX==2.6.5
#                 python3 -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3  # sdist only
#   device run:   bash scripts/gpu_check.sh          (carry: [".whl"], timeout_s: 600)
#
# Elsewhere (any CUDA machine with ae-jax's dependencies installed) it runs the same steps;
# OUT (default ./gpu_check_out) receives the results, GPU_CHECK_BUDGET (default 470 s) caps the
# whole run. Every step has its own timeout, its status is logged to $OUT/steps.tsv, and a
# failing step never stops the later ones. What comes back (9 files at most):
#   gpu_check.log        everything every step printed
#   steps.tsv            step, exit status (124: timed out; skip: no time left), seconds
#   default_metrics.json / default_train.log   python experiments/train.py (the default job)
#   bf16_metrics.json    the default job with trainer.precision=bfloat16
#   conv_metrics.json    model=conv on digits (flax's convolutions on the GPU)
#   benchmark.json       scripts/benchmark.py --only ceiling training (no MNIST files there):
#                        the Hinton autoencoder at batch 128, 1000 and 8192
#   sweep.json           scripts/benchmark.py --only sweep: 64 vmapped digits members vs one
#   torch.json           scripts/benchmark.py --only torch: the Hinton step in PyTorch, if time
#                        is left (eager and torch.compile; the image has torch)
set -u

OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
STEPS="$OUT/steps.tsv"
BUDGET="${GPU_CHECK_BUDGET:-470}"
START=$(date +%s)
DEADLINE=$((START + BUDGET))
WORK="$(mktemp -d /tmp/ae_jax_gpu_check.XXXXXX)"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
export AE_JAX_COMPILATION_CACHE="$WORK/xla_cache"
printf 'step\tstatus\tseconds\n' >"$STEPS"
: >"$LOG"

# step NAME TIMEOUT COMMAND...: run with min(TIMEOUT, time left - 10 s); log status and seconds.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((DEADLINE - $(date +%s) - 10))
    ((limit > left)) && limit=$left
    if ((limit < 15)); then
        printf '%s\tskip\t0\n' "$name" >>"$STEPS"
        echo "=== $name: skipped, ${left}s left" | tee -a "$LOG"
        return 0
    fi
    echo "=== $name (timeout ${limit}s): $*" | tee -a "$LOG"
    local t0 rc
    t0=$(date +%s)
    timeout -k 10 "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - t0))" >>"$STEPS"
    echo "=== $name: exit $rc after $(($(date +%s) - t0))s" | tee -a "$LOG"
}

# 1. What the machine has.
step env 60 bash -c "nvidia-smi; $PY -V; $PY -m pip list 2>/dev/null | grep -i -E \
'^(jax|flax|optax|orbax|hydra|omegaconf|antlr4|tensorboardx|scikit-learn|matplotlib|numpy|\
pytest|torch)[-a-z0-9]* '"

# 2. The missing pure-Python packages from the carried wheels (no index, no dependencies).
if compgen -G ".whl/*.whl" >/dev/null; then
    step install 90 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target "$WORK/site" .whl/*.whl
    export PYTHONPATH="$WORK/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    echo "no .whl/ wheels: using the installed packages" | tee -a "$LOG"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

# 3. JAX sees the GPU; which convolution path and matmul precisions the code picks there.
step devices 90 "$PY" -c "
import jax, flax, optax, hydra
from ae_jax.models.conv_ops import conv_impl
print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__)
print('backend', jax.default_backend(), jax.devices())
print('device_kind', jax.devices()[0].device_kind, 'conv path', conv_impl())
assert jax.default_backend() == 'gpu', 'no GPU backend'
"

# 4. The GPU-relevant tests on the GPU (conftest's JAX_PLATFORMS=cpu overridden).
step tests_gpu 150 env JAX_PLATFORMS=cuda "$PY" -m pytest -x -q -p no:cacheprovider \
    tests/test_conv_ops.py tests/test_precision.py

# 5. The default job, as README's quick start runs it; then bf16 and the conv model.
step default_job 100 "$PY" experiments/train.py hydra.run.dir="$WORK/default"
cp "$WORK/default/metrics.json" "$OUT/default_metrics.json" 2>/dev/null
cp "$WORK/default/train.log" "$OUT/default_train.log" 2>/dev/null

# 6. The benchmark: device kind, f32 and bf16 ceilings, training rows, device memory.
step benchmark 200 "$PY" scripts/benchmark.py --only ceiling training \
    --out "$OUT/benchmark.json"

step bf16_job 60 "$PY" experiments/train.py hydra.run.dir="$WORK/bf16" \
    trainer.precision=bfloat16 trainer.figures=false
cp "$WORK/bf16/metrics.json" "$OUT/bf16_metrics.json" 2>/dev/null

step conv_job 60 "$PY" experiments/train.py hydra.run.dir="$WORK/conv" model=conv \
    trainer.epochs=30 trainer.figures=false
cp "$WORK/conv/metrics.json" "$OUT/conv_metrics.json" 2>/dev/null

step sweep 90 "$PY" scripts/benchmark.py --only sweep --out "$OUT/sweep.json"

# 7. Data parallelism under this JAX version (8 fake CPU devices: the GPU machine has one GPU).
step tests_parallel_cpu 90 "$PY" -m pytest -x -q -p no:cacheprovider tests/test_parallel.py

# 8. PyTorch side by side (same Hinton step), with whatever time is left.
step torch 120 "$PY" scripts/benchmark.py --only torch --out "$OUT/torch.json"

echo "=== done in $(($(date +%s) - START))s" | tee -a "$LOG"
column -t "$STEPS" | tee -a "$LOG"
grep -h -E '"test/mse"' "$OUT"/*_metrics.json 2>/dev/null | tee -a "$LOG"
rm -rf "$WORK"
# exit status: 0 only if every step passed
! grep -q -v -P '^step\t|\t0\t' "$STEPS"
