#!/usr/bin/env bash
# First of the two prepared device calls (the tool `device`; a GPU machine with its own PyTorch):
#   - the yardstick (scripts/gpu_yardstick.py): facepoison's training loop and crafter beside bare eager loops, faces
#     (float32 and bf16 crafting, with torch.profiler tables) and CIFAR-10 (both precisions; the paper's craft
#     projected);
#   - `facepoison protect --device cuda` on 40 identities' thumbnails and the group photos (scripts/protect_speed.sh);
#   - leaves the prepared CelebA-wild set in /tmp/fpdata for scripts/gpu_faces.sh, the next call on the warm machine
#     (the two prepared sets and the tree do not fit in one call's 64 MiB).
# Expects (ignored, carried): .whl/ (facenet-pytorch, dacite wheels), .gpu/speed/celeba_wild.h5,
# .gpu/speed/data/{faces/celeba_wild/<id>/,photos/group/}. Writes to $OUT (or ./gpu_out).
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT" /tmp/fpdata /tmp/bin
cp .gpu/speed/celeba_wild.h5 /tmp/fpdata/
[ -d /tmp/site ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1 PATH=/tmp/bin:$PATH
printf '#!/bin/sh\nexec python3 -m facepoison "$@"\n' > /tmp/bin/facepoison; chmod +x /tmp/bin/facepoison
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__)"; } | tee "$OUT/gpu.txt"
y() { timeout 120 python3 scripts/gpu_yardstick.py "$@" 2>&1 | tail -n 4; }
y --steps 10 --profile --out "$OUT/yardstick_faces.json"
y --steps 10 --craft-bf16 --profile --out "$OUT/yardstick_faces_bf16.json"
y --steps 10 --channels-last --out "$OUT/yardstick_faces_cl.json"
y --preset cifar --batch 500 --steps 20 --out "$OUT/yardstick_cifar.json"
y --preset cifar --batch 500 --steps 20 --craft-bf16 --out "$OUT/yardstick_cifar_bf16.json"
PROTECT_SPEED_IDS=40 FACEPOISON_DATA=.gpu/speed/data timeout 150 bash scripts/protect_speed.sh /tmp/ps --device cuda \
  > "$OUT/protect_speed_gpu.json" 2> "$OUT/protect_speed_gpu.log"
echo "protect exit $?"; tail -n 5 "$OUT/protect_speed_gpu.log"; cat "$OUT/protect_speed_gpu.json"
python3 - "$OUT" <<'PY'
import json, sys, glob
for f in sorted(glob.glob(sys.argv[1] + "/yardstick_*.json")):
    r = json.load(open(f))
    print(f.split("/")[-1], r["device"], {k: round(v, 3) for k, v in r["ratios"].items()},
          {k: {a: round(b) for a, b in r[k].items()} for k in ("train_images_per_s", "craft_image_steps_per_s")},
          round(r.get("paper_cifar_craft_minutes", 0), 1))
PY
