#!/usr/bin/env bash
# Second prepared device call: the face experiment at full width (configs/faces_gpu.yaml, then faces_gpu16.yaml on
# the same cached stages when time is left). Run right after scripts/gpu_speed.sh on the warm machine, which left the
# CelebA-wild set in /tmp/fpdata; carries .gpu/faces/ (cfp.h5, cfp/Protocol, cfp_lfw_name_overlap.tsv) and .whl/ (or,
# alone, the one-call bundle .gpu/one/ of scripts/gpu_prepare.sh).
# BUDGET (seconds, default 450) bounds both experiments; the reports, logs and the run's metadata come back in $OUT.
# CONFIGS (default "configs/faces_gpu.yaml configs/faces_gpu16.yaml") names the experiments, run in order while
# more than 170 s of the budget is left, e.g. CONFIGS=configs/faces_gpu_targeted.yaml BUDGET=560.
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
t0=$(date +%s); budget=${BUDGET:-450}
if [ -d .gpu/one ]; then  # the one-call bundle of scripts/gpu_prepare.sh: unpack it (python's lzma: no xz needed)
  mkdir -p .gpu/faces .whl && cp .gpu/one/*.whl .whl/
  python3 -c "import lzma, shutil, tarfile
for n in ('cfp', 'celeba_wild'):
    with lzma.open(f'.gpu/one/{n}.h5.xz') as f, open(f'.gpu/faces/{n}.h5', 'wb') as g: shutil.copyfileobj(f, g, 1 << 24)
tarfile.open('.gpu/one/meta.tar.xz').extractall('.gpu/faces')" || { echo "could not unpack .gpu/one"; exit 3; }
fi
if [ ! -f .gpu/faces/celeba_wild.h5 ]; then
  cp /tmp/fpdata/celeba_wild.h5 .gpu/faces/ || { echo "no CelebA-wild set: the machine is not the warm one"; exit 3; }
fi
[ -d /tmp/site ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/gpu.txt"
run() {  # config, seconds
  timeout "$2" python3 -m facepoison experiment "$1" --device cuda > "$OUT/$(basename "$1" .yaml).log" 2>&1
  echo "$1 exit $? after $(( $(date +%s) - t0 )) s"
}
first=1
for cfg in ${CONFIGS:-configs/faces_gpu.yaml configs/faces_gpu16.yaml}; do
  left=$((budget - $(date +%s) + t0))
  if [ "$first" = 1 ] || [ "$left" -gt 170 ]; then run "$cfg" $((left - 10)); else echo "$cfg skipped: ${left} s left"; fi
  first=0
done
tar czf "$OUT/reports.tgz" docs/results/faces_gpu* 2>/dev/null
find runs/experiments/faces_gpu -name "*.json" | tar czf "$OUT/meta.tgz" -T - 2>/dev/null
for f in "$OUT"/*.log; do tr '\r' '\n' < "$f" | grep -v "it/s\|step/s\|s/it\|round/s" > "$f.txt"; rm "$f"; done
tail -n 25 "$OUT"/*.log.txt; grep -A12 "^| Set" docs/results/faces_gpu*.md 2>/dev/null
