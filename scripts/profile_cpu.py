#!/usr/bin/env python
"""Where the time goes on CPU: a training step, a crafting step and a protected thumbnail.

- Training and crafting: the CIFAR benchmark's setting (ResNet-18, CIFAR stem, width 16, batch 128, float32,
  alignment with shift+flip augmentation), each profiled with ``torch.profiler`` over a few steps after a warm-up;
  the top operators by self CPU time, and the crafting/training step ratio.
- protect: ``facepoison protect``'s stages (detect + align + embed, craft, paste back + encode) on 250×250 CelebA-wild
  thumbnails with the bundled surrogate at the default strength, wall time per stage.

Usage:
    python scripts/profile_cpu.py [--out docs/results/profile_cpu] [--thumbnails 20] [--threads 2]
Writes OUT.md and OUT.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.profiler import ProfilerActivity, profile

from facepoison.crafter import CrafterConfig, PoisonCrafter
from facepoison.losses import target_gradient
from facepoison.objectives import create_objective
from facepoison.provenance import code_revision
from recognition.models import create_model
from recognition.train import TrainConfig, make_optimizer


def top_ops(prof, n: int = 10) -> list[dict]:
    """The ``n`` operators with the most self CPU time: name, calls, self ms in total and share."""
    rows = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in rows) or 1
    rows.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [{"op": e.key, "calls": e.count, "self_ms": round(e.self_cpu_time_total / 1000, 1),
             "share": round(e.self_cpu_time_total / total, 3)} for e in rows[:n]]


def profile_steps(fn, steps: int) -> tuple[float, list[dict]]:
    """Seconds per call of ``fn`` (timed outside the profiler) and its top operators (profiled separately)."""
    fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    seconds = (time.perf_counter() - t0) / steps
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    return seconds, top_ops(prof)


def train_and_craft(steps: int) -> dict:
    torch.manual_seed(0)
    model = create_model("resnet18", 10, width=16)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(128, 3, 32, 32, generator=g), torch.randint(0, 10, (128,), generator=g)
    opt = make_optimizer(model, TrainConfig())

    def train_step() -> None:
        model.train()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    objective = create_objective("alignment", target_gradient(model, [(x, y)]))
    crafter, crafter0 = (PoisonCrafter(model, objective, CrafterConfig(eps=8, steps=k, augment="shift_flip",
                                                                       max_shift=0.125)) for k in (1, 0))

    def craft_step() -> None:
        crafter(x, y, generator=torch.Generator().manual_seed(0))

    def craft_call0() -> None:
        crafter0(x, y, generator=torch.Generator().manual_seed(0))

    train_s, train_ops = profile_steps(train_step, steps)
    call1_s, craft_ops = profile_steps(craft_step, steps)
    call0_s, _ = profile_steps(craft_call0, steps)
    craft_s = call1_s - call0_s
    return {"train_step_s": train_s, "craft_step_s": craft_s, "ratio": craft_s / train_s,
            "craft_call_overhead_s": call0_s, "train_ops": train_ops, "craft_ops": craft_ops,
            "note": "a crafting step is a 1-step crafter call minus a 0-step call (its start point and final "
                    "loss evaluation), as scripts/cifar_benchmark.py measures it; the operator table is of the "
                    "1-step calls"}


def protect_stages(n: int) -> dict:
    from facepoison.protect import Protector

    data = Path(os.environ.get("FACEPOISON_DATA", "../shared/data")) / "faces" / "celeba_wild"
    folders = sorted(p for p in data.iterdir() if p.is_dir())[:5]
    photos = [f for d in folders for f in sorted(d.iterdir())][:n]
    images = [np.asarray(Image.open(p).convert("RGB")) for p in photos]
    groups = [p.parent.name for p in photos]
    protector = Protector(strength="mid")
    protector.protect_batch(images[:1], groups[:1])  # warm-up (model load, first calls)
    t0 = time.perf_counter()
    scans = protector.scan(images)
    t1 = time.perf_counter()
    deltas = dict(protector.craft(scans, groups))
    t2 = time.perf_counter()
    for i, (rgb, scan) in enumerate(zip(images, scans, strict=True)):
        protector.apply(rgb, scan, deltas.get(i, []))
    t3 = time.perf_counter()
    total = t3 - t0
    return {"photos": len(images), "faces": sum(len(s.faces) for s in scans), "identities": len(set(groups)),
            "objective": protector.settings.objective,
            "detect_align_embed_s": t1 - t0, "craft_s": t2 - t1, "paste_back_s": t3 - t2, "total_s": total,
            "photos_per_s": len(images) / total}


def render(r: dict) -> str:
    def ops_table(ops: list[dict]) -> str:
        lines = ["| operator | calls | self ms | share |", "|---|---|---|---|"]
        lines += [f"| `{o['op']}` | {o['calls']} | {o['self_ms']} | {100 * o['share']:.1f}% |" for o in ops]
        return "\n".join(lines)

    tc, p = r["train_craft"], r["protect"]
    scan_share = 100 * p["detect_align_embed_s"] / p["total_s"]
    return f"""# CPU profile (generated by `{r['command']}`; do not edit by hand)

Machine: {r['machine']}, {r['threads']} torch threads. Date: {r['date']}. Code: {r['code_revision']}.

## Training step vs crafting step (ResNet-18 width 16, CIFAR stem, batch 128, float32)

Training step {1000 * tc['train_step_s']:.0f} ms, crafting step (alignment, shift+flip, double backward)
{1000 * tc['craft_step_s']:.0f} ms: ratio **{tc['ratio']:.2f}×** ({tc['note']}).

Training step, top operators by self CPU time:

{ops_table(tc['train_ops'])}

Crafting step, top operators by self CPU time:

{ops_table(tc['craft_ops'])}

## A protected thumbnail (`Protector(strength="mid")`, objective {p['objective']})

{p['photos']} CelebA-wild 250×250 photos ({p['faces']} faces) of {p['identities']} identities, protected together as
`facepoison protect` does a folder: {p['photos_per_s']:.2f} photos/s.

| stage | seconds | share |
|---|---|---|
| detect + align + embed (scan) | {p['detect_align_embed_s']:.2f} | {scan_share:.0f}% |
| craft | {p['craft_s']:.2f} | {100 * p['craft_s'] / p['total_s']:.0f}% |
| paste back | {p['paste_back_s']:.2f} | {100 * p['paste_back_s'] / p['total_s']:.0f}% |
| total | {p['total_s']:.2f} | |
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/results/profile_cpu")
    parser.add_argument("--thumbnails", type=int, default=20)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"train_craft": train_and_craft(args.steps), "protect": protect_stages(args.thumbnails),
              "threads": args.threads, "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, "
                                                  f"torch {torch.__version__}",
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "code_revision": code_revision(),
              "command": "python scripts/profile_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(render(result))
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
