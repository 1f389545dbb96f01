#!/usr/bin/env bash
# Speed of `facepoison protect` at the default strength with the bundled surrogate:
#   - ~100 single-face 250×250 thumbnails (5 CelebA-wild identities, ../shared/data/faces/celeba_wild);
#   - the group photos of ../shared/data/photos/group.
# Usage: bash scripts/protect_speed.sh [OUT_DIR] [extra protect options, e.g. --device cuda]
# PROTECT_SPEED_IDS=N takes N identities (release lines 205-N..204) instead of 5 (about 20 thumbnails each; a GPU
# needs more to time).
set -euo pipefail
OUT=${1:-runs/protect_speed}
shift || true
DATA=${FACEPOISON_DATA:-../shared/data}
rm -rf "$OUT"
ids=$(grep -v '^#' docs/results/splits/celeba_release.txt | sed -n "$((205 - ${PROTECT_SPEED_IDS:-5})),204p" | sed "s|^|$DATA/faces/celeba_wild/|")
# shellcheck disable=SC2086
facepoison protect $ids --out "$OUT/thumbnails" -q "$@" > "$OUT.thumbnails.json"
facepoison protect "$DATA/photos/group" --out "$OUT/group" -q "$@" > "$OUT.group.json"
python - "$OUT" <<'PY'
import json, sys, platform, os
from datetime import datetime, timezone
out = sys.argv[1]
rows = []
for name in ("thumbnails", "group"):
    s = json.load(open(f"{out}.{name}.json"))
    recs = [json.loads(l) for l in open(f"{out}/{name}/manifest.jsonl")]
    faces = sum(r["faces"] for r in recs if r["status"] == "protected")
    rows.append({"set": name, "photos": s["photos"], "faces": faces, "seconds": s["seconds"],
                 "photos_per_s": round(s["photos"] / s["seconds"], 2), "faces_per_s": round(faces / s["seconds"], 2),
                 "max_linf_png_or_jpeg": max(r.get("linf", 0) for r in recs),
                 "min_ssim": min(r.get("ssim", 1) for r in recs),
                 "stage_seconds": s.get("stage_seconds")})
try:
    import torch
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"{platform.machine()} CPU ({os.cpu_count()} cores)"
except Exception:
    dev = platform.machine()
print(json.dumps({"machine": dev, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "rows": rows}, indent=2))
PY
