#!/usr/bin/env bash
# One call on the lent GPU machine (the `device` tool): install the carried wheels, train a
# chunk of the thesis matrix with the runner, measure training throughput, and pack it all
# into $OUT/results.tar.gz (the device returns at most 8 files, 2 folders deep).
#
#   bash scripts/gpu_device_run.sh "xray_cnn xray_cnn_aug" chest_xray=gpu/chest_xray_224.zip 420
#
# Carried (ignored by git, named in the call's `carry`): gpu/wheels (../shared/gpu/wheels),
# gpu/bundle (`medimg gpu-bundle`), the dataset archive. Read docs/gpu.md first.
set -euo pipefail
: "${OUT:?the device tool sets OUT}"
RUNS="$1"          # runs of the bundle, space-separated
ARCHIVE="$2"       # dataset=path/to/archive.zip
BUDGET="${3:-420}" # seconds after which no new seed starts
PRECISION="${PRECISION:-float32}"

export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # medimg from the checkout, not pip
python -m pip install --no-deps --no-index --quiet gpu/wheels/*.whl
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/device.txt"

results=$(mktemp -d)/results
# shellcheck disable=SC2086  # RUNS is a list
python -m medimg.runner.run --bundle gpu/bundle --archive "$ARCHIVE" --runs $RUNS \
    --budget-s "$BUDGET" --precision "$PRECISION" --out "$results" 2>&1 | tail -n 40

# Throughput of each model in the pipeline (memory-mapped input, augmentation where `auto`
# puts it on JAX) against the bare model on in-memory arrays, on the same device.
{
  python benchmarks/train_throughput.py --model xray_cnn --channels 1 --sizes 224 \
      --images 1024 --batch-size 8 --epochs 3
  for model in mri_cnn alexnet efficientnet_b0; do
    python benchmarks/train_throughput.py --model "$model" --channels 3 --sizes 224 \
        --images 1024 --batch-size 32 --epochs 3 --variants "a bare" "b pipeline" "d loader"
  done
} > "$results/throughput.txt" 2>&1 || echo "throughput benchmark failed: see throughput.txt"

tar czf "$OUT/results.tar.gz" -C "$(dirname "$results")" results
ls -l "$OUT"
