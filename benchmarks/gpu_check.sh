#!/usr/bin/env bash
# GPU check: install the project (no dependency changes), run the kernel tests on the GPU, then the
# full GPU benchmark. Needs torch + triton (+ pyyaml) already installed; never reinstalls torch and
# does not need optuna / ray / sqlalchemy. Sized to finish within ~9 minutes on one H100 (tests <= 150 s, kernel benchmark <= 280 s,
# EvoFormer block <= 120 s).
# Writes benchmarks/results/<gpu name>.csv and copies it (and the logs) to $OUT when set.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
phase() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }

phase "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

phase "install (pip --no-deps -e .)"
if ! pip install --no-deps --no-build-isolation -e . >/tmp/gpu_check_pip.log 2>&1; then
    echo "pip install failed (see below); using PYTHONPATH=. instead"; tail -5 /tmp/gpu_check_pip.log
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

phase "kernel tests on GPU"
timeout 150 python -m pytest tests/test_triton_kernel.py tests/test_triton_opcheck.py tests/test_cpu_flex_backends.py -q -x -p no:cacheprovider 2>&1 | tee /tmp/gpu_check_pytest.log | tail -25
TEST_RC=${PIPESTATUS[0]}
phase "tests finished with rc=$TEST_RC"

phase "benchmark (row L=512..4096, tri L=512..2048; sparsity 0/50/75/90; fwd, fwd+bwd; bf16)"
CSV="benchmarks/results/$(python -c "from kernels.bench import device_name, _file_name; import torch; print(_file_name(device_name(torch.device('cuda'))))").csv"
timeout 280 python -m kernels.bench --device cuda --dtype bfloat16 --workloads row,tri \
    --sparsities 0,50,75,90 --passes fwd,fwdbwd --time-budget 220 --out "$CSV" 2>&1 | tee /tmp/gpu_check_bench.log
BENCH_RC=${PIPESTATUS[0]}
phase "benchmark finished with rc=$BENCH_RC"

phase "EvoFormer block (MSA depth 128, L=256,512,1024, fwd; naive / SDPA / sparse at 50, 75, 90%)"
EVO_CSV="benchmarks/results/evoformer-$(python -c "import torch, re; print(re.sub(r'[^A-Za-z0-9]+', '-', torch.cuda.get_device_name()).strip('-').lower())").csv"
timeout 120 python -m autotune.evoformer.bench --device cuda --lengths 256 512 1024 --modes fwd \
    --sparsity 0.5 0.75 0.9 --out "$EVO_CSV" 2>&1 | tee /tmp/gpu_check_evoformer.log
EVO_RC=${PIPESTATUS[0]}
phase "EvoFormer benchmark finished with rc=$EVO_RC"

if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    cp -v "$CSV" "$EVO_CSV" "$OUT/" 2>/dev/null || true
    cp /tmp/gpu_check_pytest.log /tmp/gpu_check_bench.log /tmp/gpu_check_evoformer.log "$OUT/" 2>/dev/null || true
fi
phase "done (tests rc=$TEST_RC, bench rc=$BENCH_RC, evoformer rc=$EVO_RC)"
[ "$TEST_RC" -eq 0 ] && [ "$BENCH_RC" -eq 0 ] && [ "$EVO_RC" -eq 0 ]
