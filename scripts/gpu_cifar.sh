#!/usr/bin/env bash
# One prepared GPU check for the device tool: the CIFAR benchmark at the GPU config.
# Expects the data as .gpu/cifar10.tar.gz (tar czf .gpu/cifar10.tar.gz -C ../shared/data cifar10)
# and writes its results to $OUT (or ./gpu_out).
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT" /tmp/fpdata
tar xzf .gpu/cifar10.tar.gz -C /tmp/fpdata
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, h5py; print('torch', torch.__version__, 'h5py', h5py.__version__)" | tee -a "$OUT/gpu.txt"
export PYTHONPATH=$PWD
timeout "${BUDGET:-530}" python3 scripts/cifar_benchmark.py configs/cifar_gpu.yaml --data-root /tmp/fpdata/cifar10 \
  --run-dir /tmp/fprun --report "$OUT/cifar_gpu.md" > "$OUT/log.txt" 2>&1
echo "exit $?" >> "$OUT/log.txt"
cp /tmp/fprun/results.json "$OUT/" 2>/dev/null
grep -v "^\s*$" "$OUT/log.txt" | grep -iv "epoch\|chunk" | tail -30
