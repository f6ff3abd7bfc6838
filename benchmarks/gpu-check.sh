#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run (a lent GPU gives minutes, not hours):
#   1. the CUDA tests (tests/test_cuda.py: mixed precision, a GPU checkpoint read without a
#      GPU, resume on CUDA);
#   2. `bench train` on the GPU: the frozen article configuration and from scratch, 256 px;
#   3. one real run of the from-scratch recipe at 256 px on the real data, stopped after
#      TRAIN_LIMIT seconds if it has not finished by then (its history then gives the
#      seconds per epoch to extrapolate from), and `evaluate` on the official test split.
# Everything is printed and written under OUT: gpu-check.log, the run's history.csv, predictions-test.csv (for `results`),
# config.json, manifest.csv (its images), metrics-test.json and best.pt. The script stops at the first step that fails
# (set -e), and every model it scores is appended to OUT/scored.tsv (time, commit, seed, size,
# device, epochs, metrics), so a run that is scored is logged even when a later step fails:
# copy those rows into docs/results.md.
#
# Usage, from the checkout:  benchmarks/gpu-check.sh [DATA] [OUT]
#   DATA  default ../shared/data/kermany-224 (train/ and test/)
#   OUT   default outputs/gpu-check
# Settings: DEVICE=cuda (DEVICE=cpu: a dry run of the same steps, tiny and quick, to try the
# script on a machine without a GPU), TRAIN_LIMIT=330 (seconds), PYTHON=python3 (the
# interpreter that has torch; the checkout is imported, nothing is installed).
set -euo pipefail

DATA=${1:-../shared/data/kermany-224}
OUT=${2:-outputs/gpu-check}
DEVICE=${DEVICE:-cuda}
TRAIN_LIMIT=${TRAIN_LIMIT:-330}
PY=${PYTHON:-python3}
WORK=$(mktemp -d)  # the run folder and the image cache: large, so not under OUT
RUN=$WORK/run
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
# cuBLAS picks the same reduction order every time (needed for a deterministic resume check)
export CUBLAS_WORKSPACE_CONFIG=:4096:8
export PNEUMONIA_OUTPUTS=$WORK/outputs

if [ "$DEVICE" = cpu ]; then
    BENCH_SIZE=(--quick) TRAIN_SIZE=(--quick --epochs 1)
else
    BENCH_SIZE=(--max-images 1024 --repeats 3) TRAIN_SIZE=()
fi

{
    echo "== gpu-check $(date -u +%FT%TZ), device $DEVICE, data $DATA"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true
    "$PY" -c "import sys, torch, torchvision; print('python', sys.version.split()[0], 'torch', torch.__version__, 'torchvision', torchvision.__version__, 'CUDA', torch.cuda.is_available() and torch.cuda.get_device_name())"

    echo "== 1. CUDA tests"
    # addopts cleared: it names nbmake's option, and the notebooks are not run here
    "$PY" -m pytest -o addopts="" -p no:cacheprovider -ra -s -v tests/test_cuda.py

    echo "== 2. bench train, frozen article configuration (random weights), 256 px"
    "$PY" -m helpers bench train --data "$DATA" --device "$DEVICE" "${BENCH_SIZE[@]}"
    echo "== 2. bench train, from scratch, 256 px"
    "$PY" -m helpers bench train --data "$DATA" --device "$DEVICE" --pretrained none "${BENCH_SIZE[@]}"

    echo "== 3. the from-scratch recipe at 256 px, seed 42 (stopped after ${TRAIN_LIMIT}s if not done)"
    start=$(date +%s)
    status=0
    timeout "$TRAIN_LIMIT" "$PY" -m helpers train --data "$DATA" --out "$RUN" --pretrained none \
        --image-size 256 --seed 42 --device "$DEVICE" "${TRAIN_SIZE[@]}" || status=$?
    echo "train exit status $status after $(($(date +%s) - start)) s (124: stopped at the limit)"
    # 124 (the time limit) leaves a usable best.pt; any other failure stops the script here
    [ "$status" -eq 0 ] || [ "$status" -eq 124 ] || exit "$status"
    "$PY" -m helpers evaluate --run "$RUN" --device "$DEVICE"
    cp "$RUN"/history.csv "$RUN"/config.json "$RUN"/manifest.csv "$RUN"/metrics-test.json "$RUN"/predictions-test.csv "$RUN"/best.pt "$OUT"/
    "$PY" - "$RUN" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" "$DEVICE" >> "$OUT/scored.tsv" <<'PY'
import json, sys, time
from pathlib import Path

run, commit, device = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
config = json.loads((run / "config.json").read_text())["config"]
m = json.loads((run / "metrics-test.json").read_text())
keys = ("accuracy", "weighted_f1", "sensitivity", "specificity", "roc_auc")
cells = [time.strftime("%FT%TZ", time.gmtime()), commit, str(config["seed"]),
         str(config["image_size"]), device] + [f"{m[k]:.4f}" if k in m else "?" for k in keys]
print("\t".join(cells))
PY
    echo "scored: $(tail -n 1 "$OUT/scored.tsv")"
    echo "== done $(date -u +%FT%TZ)"
} 2>&1 | tee "$OUT/gpu-check.log"
