#!/usr/bin/env bash
# Lay out what the two prepared device calls carry (all under ignored folders):
#   .whl/         facenet-pytorch and dacite wheels (the GPU image has the other dependencies)
#   .gpu/speed/   the prepared CelebA-wild face set + 40 identities' thumbnails + the group photos (scripts/gpu_speed.sh)
#   .gpu/faces/   the prepared CFP face set, the CFP protocols and the LFW-overlap list (scripts/gpu_faces.sh)
# Needs the prepared sets of a CPU experiment run (runs/experiments/prepared/, made by `facepoison experiment` or
# `facepoison prepare`) and ../shared/data. Then, with the device tool:
#   run "bash scripts/gpu_speed.sh"  carry [.whl, .gpu/speed]   (about 3 minutes)
#   run "bash scripts/gpu_faces.sh"  carry [.whl, .gpu/faces]   (right after, on the warm machine; BUDGET seconds)
# or, for the face experiments alone, one call (the machine keeps nothing between calls when they are more than its
# idle release, 30 s, apart):
#   .gpu/one/     both face sets and the protocols xz-compressed, and the dacite wheel (about 62 MiB with the tree)
#   run "bash scripts/gpu_faces.sh"  carry [.gpu/one]             (it unpacks .gpu/one when it is there)
set -euo pipefail
DATA=${FACEPOISON_DATA:-../shared/data}
PREP=${PREPARED:-runs/experiments/prepared}
celeba=$(ls "$PREP"/celeba_wild-*.h5 | head -1); cfp=$(ls "$PREP"/cfp-*.h5 | head -1)
mkdir -p .whl .gpu/speed/data/faces/celeba_wild .gpu/speed/data/photos .gpu/faces/cfp
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl facenet-pytorch==2.5.3 dacite==1.9.2
cp "$celeba" .gpu/speed/celeba_wild.h5
cp "$cfp" .gpu/faces/cfp.h5
cp -r "$DATA/faces/cfp/Protocol" .gpu/faces/cfp/
cp "$DATA/faces/cfp/cfp_lfw_name_overlap.tsv" .gpu/faces/
for id in $(grep -v '^#' docs/results/splits/celeba_release.txt | sed -n "165,204p"); do
  cp -r "$DATA/faces/celeba_wild/$id" .gpu/speed/data/faces/celeba_wild/
done
cp -r "$DATA/photos/group" .gpu/speed/data/photos/
mkdir -p .gpu/one
xz -6 -T1 -c .gpu/faces/cfp.h5 > .gpu/one/cfp.h5.xz
xz -6 -T1 -c .gpu/speed/celeba_wild.h5 > .gpu/one/celeba_wild.h5.xz
tar cJf .gpu/one/meta.tar.xz -C .gpu/faces cfp cfp_lfw_name_overlap.tsv
cp .whl/dacite-*.whl .gpu/one/
du -sh .whl .gpu/speed .gpu/faces .gpu/one
