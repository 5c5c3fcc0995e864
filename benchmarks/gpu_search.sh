#!/usr/bin/env bash
# The search on one GPU, end to end, on an offline node: install the search's wheels that travel
# with the checkout, run the quick space (search_spaces/protein-quick.yaml, <= 5 minutes) with the
# local executor, export the tuned file, re-time the exported configs alone, write the report.
#
#   bash benchmarks/gpu_search.sh            # on the GPU node (about 5.5 minutes)
#   bash benchmarks/gpu_search.sh --dry-run  # (or GPU_SEARCH_DRY=1) the same steps on a CPU, a 2-trial CPU study
#   (GPU_SEARCH_SPACE: another space for the dry run; GPU_SEARCH_OUT: where its files go)
#
# Before: on a machine with internet access prepare the wheels for the node's Python into .whl/
# (ignored by git; copy it with the checkout):
#   python -m autotune.offline prepare --dest .whl --python-version 3.12
# The node needs torch and triton (its own CUDA build), numpy, pyyaml, tqdm; nothing is downloaded.
# When the search's packages import already, the wheels are not needed. Where a transfer limits
# the size (biotite's wheel is ~55 MiB), prepare biotite into its own folder and install it first
# into .site/ (kept on the node; this script puts .site on PYTHONPATH):
#   python -m autotune.offline prepare --dest .whl-bio --packages biotite --python-version 3.12
#   python -m autotune.offline prepare --dest .whl --packages optuna,sqlalchemy,alembic --python-version 3.12
#   (node) python3 -m autotune.offline install .whl-bio --no-project --no-check --target .site
#
# Writes to benchmarks/results/ (GPU_SEARCH_OUT in a dry run, default a temporary folder):
# protein-quick-<gpu>.yaml (the tuned file), protein-quick-<gpu>_REPORT.md, protein-quick-<gpu>.log
# (the search, export and re-timing log), protein-quick-<gpu>-retime.json; the study database goes to
# results/ (not committed). Copies them to $OUT when it is set. Every step runs even when an earlier
# one fails; the exit status is 0 only when all did. benchmarks/gpu_check.sh may call this script
# after its own rows.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
phase() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ -d .site ] && export PYTHONPATH="$PYTHONPATH:$PWD/.site"
WHEELS=${WHEELS:-.whl}

[ "${1:-}" = "--dry-run" ] && GPU_SEARCH_DRY=1
if [ -n "${GPU_SEARCH_DRY:-}" ]; then  # the CPU rehearsal of every step: a 2-trial CPU study
    SPACE=${GPU_SEARCH_SPACE:-search_spaces/cpu.yaml}; EXTRA=(--device cpu --trials 2 --timeout 120); NAME=dry-run-cpu
    RES=${GPU_SEARCH_OUT:-$(mktemp -d)}; SEARCH_LIMIT=400
else
    SPACE=search_spaces/protein-quick.yaml; EXTRA=(); SEARCH_LIMIT=320
    NAME="protein-quick-$($PY -c "import torch, re; print(re.sub(r'[^A-Za-z0-9]+', '-', torch.cuda.get_device_name()).strip('-').lower())")"
    RES=benchmarks/results
fi
mkdir -p "$RES" results
DB="results/$NAME.db"
rm -f "$DB"
STORAGE="sqlite:///$PWD/$DB"
LOG="$RES/$NAME.log"
TUNED="$RES/$NAME.yaml"
: >"$LOG"

phase "environment" | tee -a "$LOG"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch; print('python', __import__('sys').version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } | tee -a "$LOG"

phase "the search's packages (offline wheels from $WHEELS)" | tee -a "$LOG"
INSTALL_RC=0
if $PY -c "import optuna, sqlalchemy, alembic, biotite" 2>/dev/null; then
    echo "already installed" | tee -a "$LOG"
elif [ -f "$WHEELS/requirements.txt" ]; then
    timeout 120 $PY -m autotune.offline install "$WHEELS" --no-project 2>&1 | tee -a "$LOG"; INSTALL_RC=${PIPESTATUS[0]}
else
    echo "missing: prepare them with: python -m autotune.offline prepare --dest $WHEELS --python-version 3.12" | tee -a "$LOG"
    INSTALL_RC=2
fi

phase "the paired timer's L2 flush (tests/test_gpu_timing.py)" | tee -a "$LOG"
timeout 90 $PY -m pytest -q -p no:cacheprovider -o addopts="" tests/test_gpu_timing.py 2>&1 | tail -3 | tee -a "$LOG"

phase "search: $SPACE --executor local ${EXTRA[*]}" | tee -a "$LOG"
timeout "$SEARCH_LIMIT" $PY -m autotune.search --space "$SPACE" --executor local --study "$NAME" --storage "$STORAGE" \
    --no-progress "${EXTRA[@]}" 2>&1 | tee -a "$LOG"
SEARCH_RC=${PIPESTATUS[0]}
phase "search rc=$SEARCH_RC" | tee -a "$LOG"

phase "export -> $TUNED" | tee -a "$LOG"
timeout 120 $PY -m autotune.export --study "$NAME" --storage "$STORAGE" --out "$TUNED" 2>&1 | tee -a "$LOG"
EXPORT_RC=${PIPESTATUS[0]}

RETIME_RC=0
if [ -f "$TUNED" ]; then
    phase "re-time the exported configs alone (41 paired rounds each)" | tee -a "$LOG"
    timeout 120 $PY benchmarks/winners.py retime --tuned "$TUNED" >"$RES/$NAME-retime.json" 2>>"$LOG"
    RETIME_RC=$?
    $PY -c "import json, sys; rows = json.load(open(sys.argv[1]))
for r in rows: print(f\"L={r['bucket']} {r['workload']}: re-timed {r['speedup']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}], exported {r['exported']:.3f} [{r['exported_lo']:.3f}, {r['exported_hi']:.3f}], inside: {r['inside_exported_interval']}\")" \
        "$RES/$NAME-retime.json" 2>&1 | tee -a "$LOG"
fi

phase "report -> $RES/${NAME}_REPORT.md" | tee -a "$LOG"
timeout 120 $PY -m autotune.report --study "$NAME" --storage "$STORAGE" --out "$RES/${NAME}_REPORT.md" 2>&1 | tee -a "$LOG"
REPORT_RC=${PIPESTATUS[0]}

if [ -n "${OUT:-}" ]; then
    cp "$LOG" "$TUNED" "$RES/$NAME-retime.json" "$RES/${NAME}_REPORT.md" "$OUT/" 2>/dev/null || true
fi
phase "done (install rc=$INSTALL_RC, search rc=$SEARCH_RC, export rc=$EXPORT_RC, retime rc=$RETIME_RC, report rc=$REPORT_RC; files in $RES)" | tee -a "$LOG"
[ "$INSTALL_RC" -eq 0 ] && [ "$SEARCH_RC" -eq 0 ] && [ "$EXPORT_RC" -eq 0 ] && [ "$RETIME_RC" -eq 0 ] && [ "$REPORT_RC" -eq 0 ]
