#!/usr/bin/env bash
# GPU check: install the project (no dependency changes), run the GPU-only kernel tests, the kernel
# benchmark and one EvoFormer block, in one call of at most 8 minutes (timeouts per phase below add
# up to 455 s including the install; every phase runs even when an earlier one fails).
#
# Needs torch + triton (+ pyyaml) already installed; never reinstalls torch (pip --no-deps) and
# imports neither optuna, ray nor sqlalchemy. Order: the bfloat16 tests first (they only run on a
# GPU), then the quick kernel tests without -x, then the benchmark with the target cases first
# (row L=4096, tri L=2048, L=512), its CSV rewritten after every case so a timeout keeps what was
# measured, and the EvoFormer block last.
#
# Writes benchmarks/results/<gpu name>.csv and benchmarks/results/evoformer-<gpu name>.csv, and
# copies them with the logs to $OUT when it is set (logs go to $OUT, else to a temporary folder).
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
phase() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
LOGS="${OUT:-$(mktemp -d)}"
mkdir -p "$LOGS"
PY=python3

phase "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

phase "install ($PY -m pip install --no-deps -e .)"
if ! timeout 45 $PY -m pip install --no-deps --no-build-isolation -e . >"$LOGS/gpu_check_pip.log" 2>&1; then
    echo "pip install failed (see below); using PYTHONPATH=. instead"; tail -5 "$LOGS/gpu_check_pip.log"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# tests: about 60 distinct kernel compilations (~1 s each on an H100) plus the runs
phase "bfloat16 kernel tests (GPU only)"
timeout 60 $PY -m pytest tests/test_triton_kernel.py -q -k bfloat16 -p no:cacheprovider 2>&1 | tee "$LOGS/gpu_check_pytest_bf16.log" | tail -8
BF16_RC=${PIPESTATUS[0]}
phase "bf16 tests rc=$BF16_RC"

phase "quick kernel tests (non-finite inputs, launch configs, op registration; every test runs)"
timeout 100 $PY -m pytest tests/test_triton_nonfinite.py tests/test_triton_configs.py tests/test_triton_opcheck.py \
    tests/test_triton_kernel.py -q -m "not slow" -k "not bfloat16" -p no:cacheprovider 2>&1 \
    | tee "$LOGS/gpu_check_pytest.log" | tail -15
TEST_RC=${PIPESTATUS[0]}
phase "quick tests rc=$TEST_RC"

phase "kernel benchmark (targets first: row L=4096, tri L=2048, L=512; sparsity 0/50/75/90; fwd, fwd+bwd; bf16)"
CSV="benchmarks/results/$($PY -c "from kernels.bench import device_name, _file_name; import torch; print(_file_name(device_name(torch.device('cuda'))))").csv"
timeout 190 $PY -m kernels.bench --device cuda --dtype bfloat16 --workloads row,tri \
    --sparsities 0,50,75,90 --passes fwd,fwdbwd --time-budget 130 --out "$CSV" 2>&1 | tee "$LOGS/gpu_check_bench.log"
BENCH_RC=${PIPESTATUS[0]}
phase "benchmark rc=$BENCH_RC ($(($(wc -l <"$CSV" 2>/dev/null || echo 1) - 1)) rows in $CSV)"

phase "EvoFormer block (MSA depth 128, L=256,512, fwd; naive / SDPA / sparse at 50, 75, 90%)"
EVO_CSV="benchmarks/results/evoformer-$($PY -c "import torch, re; print(re.sub(r'[^A-Za-z0-9]+', '-', torch.cuda.get_device_name()).strip('-').lower())").csv"
timeout 60 $PY -m autotune.evoformer.bench --device cuda --lengths 256 512 --modes fwd \
    --sparsity 0.5 0.75 0.9 --out "$EVO_CSV" 2>&1 | tee "$LOGS/gpu_check_evoformer.log"
EVO_RC=${PIPESTATUS[0]}
phase "EvoFormer rc=$EVO_RC"

if [ -n "${OUT:-}" ]; then
    cp -v "$CSV" "$EVO_CSV" "$OUT/" 2>/dev/null || true
fi
phase "done (bf16 tests rc=$BF16_RC, quick tests rc=$TEST_RC, bench rc=$BENCH_RC, evoformer rc=$EVO_RC; logs in $LOGS)"
[ "$BF16_RC" -eq 0 ] && [ "$TEST_RC" -eq 0 ] && [ "$BENCH_RC" -eq 0 ] && [ "$EVO_RC" -eq 0 ]
