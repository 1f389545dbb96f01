#!/usr/bin/env bash
# Does `facepoison protect` protect? A small experiment with the CLI alone:
#   1. protect the photos of N CelebA-wild release identities with the bundled surrogate;
#   2. a scraper detects and aligns the protected photos, and trains a CosFace victim on them;
#   3. the same victim recipe on the same photos unprotected;
#   4. held-out identification (identities never trained on) and CFP-FF/FP verification on held-out folds.
# Usage: bash scripts/protect_demo.sh [N_IDENTITIES] [RUN_DIR]   (needs ../shared/data and the prepared sets:
#   facepoison prepare ../shared/data/faces/celeba_wild --out runs/faces/celeba_wild.h5
#   facepoison prepare ../shared/data/faces/cfp --layout cfp --out runs/faces/cfp.h5)
set -euo pipefail
N=${1:-60}
RUN=${2:-runs/protect_demo}
DATA=${FACEPOISON_DATA:-../shared/data}
STRENGTH=${STRENGTH:-mid}
IDENTITIES_MODE=${IDENTITIES_MODE:-folder}
VICTIM="--width 32 --stem-stride 2 --epochs 16 --batch-size 64 --lr 0.1"
mkdir -p "$RUN"
# release identities (never the held-out ones), first N
grep -v '^#' docs/results/splits/celeba_release.txt | head -n "$N" > "$RUN/ids.txt"
folders=$(sed "s|^|$DATA/faces/celeba_wild/|" "$RUN/ids.txt")
start=$(date +%s)
# shellcheck disable=SC2086
facepoison protect $folders --out "$RUN/protected" --strength "$STRENGTH" --identities "$IDENTITIES_MODE" -q \
    | tee "$RUN/protect.json" || true
protect_s=$(( $(date +%s) - start ))
[ -f "$RUN/protected.h5" ] || facepoison prepare "$RUN/protected" --out "$RUN/protected.h5" -q
[ -f "$RUN/clean.pt" ] || facepoison train runs/faces/celeba_wild.h5 --identities "$RUN/ids.txt" \
    --out "$RUN/clean.pt" $VICTIM -q
[ -f "$RUN/protected.pt" ] || facepoison train "$RUN/protected.h5" --identities "$RUN/ids.txt" \
    --out "$RUN/protected.pt" $VICTIM -q
facepoison evaluate --model clean="$RUN/clean.pt" --model "protected ($STRENGTH, $IDENTITIES_MODE)=$RUN/protected.pt" \
    --ident runs/faces/celeba_wild.h5 --ident-split docs/results/splits/celeba_heldout.txt \
    --cfp "$DATA/faces/cfp" --cfp-faces runs/faces/cfp.h5 --cfp-folds 8-10 \
    --title "protect demo: victims trained on $N CelebA-wild identities, clean vs protected" \
    --out "$RUN/report" -q
echo "protect wall time: ${protect_s}s" | tee "$RUN/protect_seconds.txt"
