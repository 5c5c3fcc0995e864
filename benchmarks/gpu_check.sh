#!/usr/bin/env bash
# GPU check: install the project (no dependency changes), run the kernel tests on the GPU, the
# guided-layout cost, the kernel benchmark and one EvoFormer block, in one call of about 6 minutes
# (phase timeouts below add up to 385 s including the install; every phase runs even when an
# earlier one fails).
#
# Needs torch + triton (+ pyyaml) already installed; never reinstalls torch (pip --no-deps) and
# imports neither optuna, ray nor sqlalchemy. Order: the Triton and guided-layout tests (every
# Triton test file, slow-marked ones included: those are slow only under the CPU interpreter; in
# parallel with pytest-xdist when it is installed), then the guided-layout build cost against the
# attention it feeds, then the kernel benchmark with the target cases first (row L=4096, tri
# L=2048, L=512), its CSV rewritten after every case so a timeout keeps what was measured, and the
# EvoFormer block last.
#
# Writes benchmarks/results/<gpu name>.csv, benchmarks/results/guided_layout_<gpu name>.csv and
# benchmarks/results/evoformer-<gpu name>.csv, and copies them with the logs to $OUT when it is set
# (logs go to $OUT, else to a temporary folder).
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
phase() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
LOGS="${OUT:-$(mktemp -d)}"
mkdir -p "$LOGS"
PY=python3
export PYTHONUNBUFFERED=1

phase "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader || true
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

phase "install ($PY -m pip install --no-deps -e .)"
if ! timeout 45 $PY -m pip install --no-deps --no-build-isolation -e . >/tmp/gpu_check_pip.log 2>&1; then
    echo "pip install failed (see below); using PYTHONPATH=. instead"; tail -5 /tmp/gpu_check_pip.log
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
GPU=$($PY -c "from kernels.bench import device_name, _file_name; import torch; print(_file_name(device_name(torch.device('cuda'))))")

XDIST=""
$PY -c "import xdist" 2>/dev/null && XDIST="-n 8"
phase "kernel tests on the GPU (${XDIST:-serial}): Triton (bf16, fp32, non-finite, launch configs, op registration), guided layouts on the GPU"
timeout 120 $PY -m pytest $XDIST -q -p no:cacheprovider -o addopts="" -rfE \
    tests/test_gpu_guided.py tests/test_conformance.py tests/test_triton_kernel.py tests/test_triton_nonfinite.py tests/test_triton_configs.py \
    tests/test_triton_opcheck.py tests/test_guided.py tests/test_measure.py 2>&1 | tee "$LOGS/gpu_check_pytest.log" | tail -40
TEST_RC=${PIPESTATUS[0]}
phase "tests rc=$TEST_RC"

phase "guided layout: build cost vs the Triton attention it feeds (bf16, block 64, keep 0.25)"
GCSV="benchmarks/results/guided_layout_$GPU.csv"
timeout 50 $PY benchmarks/guided_layout.py --device cuda --dtype bfloat16 --rounds 15 \
    --workloads msa_row_L512,gpu_row_L2048,triangle_L512,gpu_tri_L1024 --pools max,logsumexp --out "$GCSV" 2>&1 \
    | tee "$LOGS/gpu_check_guided.log"
GUIDED_RC=${PIPESTATUS[0]}
phase "guided rc=$GUIDED_RC"

phase "kernel benchmark (targets first: row L=4096, tri L=2048, L=512; sparsity 0/50/75/90; fwd, fwd+bwd; bf16)"
CSV="benchmarks/results/$GPU.csv"
timeout 130 $PY -m kernels.bench --device cuda --dtype bfloat16 --workloads row,tri \
    --sparsities 0,50,75,90 --passes fwd,fwdbwd --time-budget 90 --out "$CSV" 2>&1 | tee "$LOGS/gpu_check_bench.log"
BENCH_RC=${PIPESTATUS[0]}
phase "benchmark rc=$BENCH_RC ($(($(wc -l <"$CSV" 2>/dev/null || echo 1) - 1)) rows in $CSV)"

phase "EvoFormer block (MSA depth 128, L=256,512, fwd; naive / SDPA / sparse at 50, 75, 90%)"
EVO_CSV="benchmarks/results/evoformer-$($PY -c "import torch, re; print(re.sub(r'[^A-Za-z0-9]+', '-', torch.cuda.get_device_name()).strip('-').lower())").csv"
timeout 40 $PY -m autotune.evoformer.bench --device cuda --lengths 256 512 --modes fwd \
    --sparsity 0.5 0.75 0.9 --out "$EVO_CSV" 2>&1 | tee "$LOGS/gpu_check_evoformer.log"
EVO_RC=${PIPESTATUS[0]}
phase "EvoFormer rc=$EVO_RC"

if [ -n "${OUT:-}" ]; then
    cp "$CSV" "$GCSV" "$EVO_CSV" "$OUT/" 2>/dev/null || true
fi
phase "done (tests rc=$TEST_RC, guided rc=$GUIDED_RC, bench rc=$BENCH_RC, evoformer rc=$EVO_RC; logs in $LOGS)"
[ "$TEST_RC" -eq 0 ] && [ "$GUIDED_RC" -eq 0 ] && [ "$BENCH_RC" -eq 0 ] && [ "$EVO_RC" -eq 0 ]
