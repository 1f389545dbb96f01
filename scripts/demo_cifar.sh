#!/usr/bin/env bash
# A short CIFAR demo of the crafting core (about 2 minutes on 2 CPU cores):
# train a small surrogate on 1,000 images, craft 8/255 alignment poisons for them, export the poisoned
# images as PNGs, and check the bound. Data: $FACEPOISON_DATA (default ../shared/data/cifar10).
set -euo pipefail
DATA=${FACEPOISON_DATA:-../shared/data/cifar10}
OUT=${1:-demo_out}
if [ -e "$OUT" ]; then echo "demo: $OUT exists; pass another folder as the first argument" >&2; exit 2; fi
mkdir -p "$OUT"
facepoison train "$DATA" --out "$OUT/surrogate.pt" --subset 1000 --width 16 --epochs 8
facepoison craft "$DATA" --surrogate "$OUT/surrogate.pt" --out "$OUT/poisons.h5" --subset 1000 --eps 8 --steps 8
facepoison export "$DATA" --poisons "$OUT/poisons.h5" --out "$OUT/poisoned_png"
echo "demo: poisoned PNGs are in $OUT/poisoned_png (|poisoned - clean| <= 8/255 per pixel)"
