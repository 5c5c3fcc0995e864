#!/usr/bin/env bash
# The one prepared GPU check (at most 8 minutes): the CUDA tests first, then the EvoFormer rows, then
# the profile, then the kernel rows (the pattern search's GPU step is a device call of its own).
#
#   bash benchmarks/gpu_check.sh            # on a CUDA machine (torch + triton installed)
#   bash benchmarks/gpu_check.sh --dry-run  # any machine: every step on the CPU at tiny sizes, into a
#                                           # temporary folder (checks the script's logic, no results)
#
# Steps, each under its own `timeout` (cut to what is left of the 470 s budget; a step with under
# 15 s left is skipped; every step runs even when an earlier one failed):
#   0. the CUDA tests (tests/test_gpu_*.py that need a CUDA device; the whole EvoFormer block in one
#      CUDA graph first: tests/test_gpu_evoformer_graph.py), then the quick cases of the kernel test
#      files that use CUDA when present (coarse tiles, fused guided build, gated forward)
#   1. EvoFormer block forward, L = 256..2048, naive (L <= 512) / SDPA / static / guided at 50, 75, 90%
#   2. EvoFormer block forward+backward (a training step without optimizer), L = 512..4096 (dense
#      runs out of memory first), SDPA / static / guided at 75, 90%, without and with activation
#      checkpointing of the block (--checkpoint none block: OpenFold's blocks_per_ckpt=1)
#   3. training max-L probe: the largest L whose forward+backward fits 80 GiB (doubling from 1024,
#      then bisection to 256, its own time cap), dense SDPA vs static sparse at 90%, without and with
#      each residual update checkpointed (--checkpoint none modules)
#   4. per-operator profile of dense, static and guided blocks, L = 256, 512
#   4b. the guided layout build (fused one-launch CUDA build against the torch build) against the
#      sparse attention it feeds, MSA row and triangle at L = 512
#   5. (not here: bash benchmarks/gpu_search.sh is the next device call, about 5.5 minutes)
#   6. kernel rows (python -m kernels.bench, targets first)
# CSVs and Markdown summaries go to benchmarks/results/ (evoformer-<gpu>-{fwd,fwdbwd,maxlen}.csv,
# profile-evoformer-<gpu>.csv, <GPU>.csv); logs and one archive of all of it go to $OUT when set.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
T0=$(date +%s)
BUDGET=470
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ $DRY -eq 1 ]; then
    RES=$(mktemp -d); LOGS="$RES"; DEV=cpu; TAG=dryrun
else
    RES=benchmarks/results; LOGS="${OUT:-$(mktemp -d)}"; DEV=cuda
fi
mkdir -p "$LOGS" "$RES"
declare -A RC

phase() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }

# run_step NAME SECONDS CMD...: CMD under `timeout`, cut to the budget left; its log in $LOGS/NAME.log
run_step() {
    local name=$1 limit=$2; shift 2
    local left=$(( BUDGET - ($(date +%s) - T0) ))
    if [ "$left" -lt 15 ]; then phase "$name: skipped (${left}s of the budget left)"; RC[$name]=skipped; return; fi
    [ "$limit" -gt "$left" ] && limit=$left
    phase "$name (timeout ${limit}s): $*"
    timeout "$limit" "$@" 2>&1 | tee "$LOGS/$name.log" | tail -25
    RC[$name]=${PIPESTATUS[0]}
    phase "$name rc=${RC[$name]}"
}

phase "environment"
if [ $DRY -eq 0 ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader || true
    $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
    TAG=$($PY -c "import torch; from autotune.evoformer.bench import device_tag; print(device_tag(torch.device('cuda')))")
fi

# sizes: the real check, or tiny ones for the dry run
if [ $DRY -eq 1 ]; then
    EVO=(--device cpu --dims small --depth 2 --repeats 1 --max-repeats 1 --warmup 1 --no-share)
    FWD_L=(32); BWD_L=(32)
    MAXLEN=(--max-len-start 16 --max-len-step 16 --max-len-limit 48 --mem-budget-gib 4 --max-len-time-cap 30)
    PROF=(--device cpu --lengths 32 --depth 2 --passes 1 --top 5)
    GB=(--device cpu --workloads triangle_L256 --rounds 3 --pools max)
    KB=(--device cpu --workloads row --lengths 256 --sparsities 50 --passes fwd --reps 1 --warmup 1 --time-budget 20)
else
    EVO=(--device cuda --depth 128 --repeats 5 --max-repeats 11 --time-cap 2 --no-share)
    FWD_L=(256 512 1024 2048); BWD_L=(512 1024 2048 3072 4096)
    MAXLEN=(--max-len-start 1024 --max-len-step 256 --max-len-limit 16384 --mem-budget-gib 80 --max-len-time-cap 70)
    PROF=(--device cuda --lengths 256 512 --depth 128 --passes 5)
    GB=(--device cuda --dtype bfloat16 --workloads msa_row_L512,triangle_L512 --rounds 9)
    KB=(--device cuda --dtype bfloat16 --workloads row,tri --sparsities 0,50,75,90 --passes fwd,fwdbwd --time-budget 45)
fi

# the tests that need a CUDA device (skipped, exit 0, in the dry run), the whole-block graph first
GPU_TESTS=(tests/test_gpu_evoformer_graph.py $(grep -l "cuda.is_available" tests/test_gpu_*.py | grep -v evoformer_graph))
# then the quick cases of the kernel files that run on CUDA when it is there (coarse forward tiles,
# the fused guided build, the gate in the forward's epilogue): exact against the reference / the
# torch build on the real device
KERNEL_TESTS=(tests/test_triton_coarse_tiles.py tests/test_guided_fused.py tests/test_triton_gate.py)
run_step gpu_tests 80 bash -c '"$0" -m pytest -q -p no:cacheprovider -o addopts="" -rs "${@:2:$1}"; a=$?
    "$0" -m pytest -q -p no:cacheprovider -o addopts="" -rs -m "not slow" "${@:$(( $1 + 2 ))}"; b=$?
    exit $(( a != 0 ? a : b ))' \
    "$PY" "${#GPU_TESTS[@]}" "${GPU_TESTS[@]}" "${KERNEL_TESTS[@]}"
run_step evoformer_fwd 90 $PY -m autotune.evoformer.bench "${EVO[@]}" --modes fwd --lengths "${FWD_L[@]}" \
    --sparsity 0.5 0.75 0.9 --naive-max-len 512 --time-budget 60 --out "$RES/evoformer-$TAG-fwd.csv"
run_step evoformer_fwdbwd 100 $PY -m autotune.evoformer.bench "${EVO[@]}" --modes fwd+bwd --lengths "${BWD_L[@]}" \
    --kinds sdpa sparse guided --sparsity 0.75 0.9 --checkpoint none block --time-budget 80 \
    --out "$RES/evoformer-$TAG-fwdbwd.csv"
run_step evoformer_maxlen 80 $PY -m autotune.evoformer.bench "${EVO[@]}" --modes fwd+bwd --lengths "${FWD_L[0]}" \
    --kinds sdpa sparse --sparsity 0.9 --checkpoint none modules --no-memory --max-len "${MAXLEN[@]}" \
    --out "$RES/evoformer-$TAG-maxlen.csv"
run_step profile 40 $PY benchmarks/profile_evoformer.py "${PROF[@]}" --out "$RES/profile-evoformer-$TAG.csv"
run_step guided_build 25 $PY benchmarks/guided_layout.py "${GB[@]}" --out "$RES/guided_layout_$TAG.csv"
# the search's GPU step takes about 5.5 minutes and its wheels are a transfer of their own: it is
# the next device call, not a step of this one
phase "gpu_search: a call of its own after this one: bash benchmarks/gpu_search.sh (README: the search on one GPU, offline)"
RC[gpu_search]=separate
run_step kernel_rows 55 $PY -m kernels.bench "${KB[@]}" --out "$RES/kernels-$TAG.csv"

if [ $DRY -eq 0 ] && [ -n "${OUT:-}" ]; then
    tar czf "$OUT/gpu_check_results.tgz" "$RES"/evoformer-"$TAG"-* "$RES/profile-evoformer-$TAG.csv" \
        "$RES/guided_layout_$TAG.csv" "$RES/kernels-$TAG.csv" 2>/dev/null || true
fi
SUMMARY=""
for k in gpu_tests evoformer_fwd evoformer_fwdbwd evoformer_maxlen profile guided_build gpu_search kernel_rows; do SUMMARY+="$k=${RC[$k]:-none} "; done
phase "done: $SUMMARY(results in $RES, logs in $LOGS)"
for k in gpu_tests evoformer_fwd evoformer_fwdbwd evoformer_maxlen profile guided_build kernel_rows; do
    [ "${RC[$k]:-1}" = "0" ] || exit 1
done
