#!/usr/bin/env python
"""The yardstick for facepoison's speed: the same model, batch and precision as a bare eager PyTorch loop, side by
side with facepoison's own training loop and crafter, in one run on one device.

- training: a CosFace ResNet-18 face recognizer (width 64, 112×112, batch 256 by default), SGD, bf16 autocast on
  CUDA; the bare loop keeps the batch on the device and does no host sync per step; facepoison's
  ``recognition.train.train_classifier`` runs on an in-memory uint8 set of the same size (its augmentation
  included).
- crafting: the alignment objective, one double backward per step (float32; ``--craft-bf16`` for bf16 autocast),
  the bare loop against ``facepoison.crafter.PoisonCrafter`` (augmentation off in both, to compare the same work).

Usage:
    python scripts/gpu_yardstick.py [--device cuda] [--batch 256] [--width 64] [--steps 20] [--out FILE.json]
A tiny CPU run (``--device cpu --batch 8 --width 4 --steps 2``) checks the script itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
from datetime import datetime, timezone

import torch
import torch.nn.functional as F

from facepoison.crafter import CrafterConfig, PoisonCrafter
from facepoison.defenses.use import InMemoryImages
from facepoison.losses import alignment_loss, flat_grad, target_gradient, trainable_parameters
from facepoison.objectives import create_objective
from recognition.heads import create_recognizer
from recognition.train import TrainConfig, make_optimizer, train_classifier


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, steps: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` after one warm-up call."""
    fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / steps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--classes", type=int, default=447)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--craft-bf16", action="store_true")
    p.add_argument("--out")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    amp = device.type == "cuda"
    torch.manual_seed(0)
    model = create_recognizer("resnet18", args.classes, width=args.width).to(device)
    x = torch.rand(args.batch, 3, 112, 112, device=device)
    y = torch.randint(0, args.classes, (args.batch,), device=device)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else contextlib.nullcontext
    cfg = TrainConfig(epochs=1, batch_size=args.batch, lr=0.01, amp=amp, crop_padding=4, flip=True)
    opt = make_optimizer(model, cfg)

    def bare_train() -> None:
        with autocast():
            loss = F.cross_entropy(model(x, y), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    bare_train_s = timed(bare_train, args.steps, device)
    n = args.batch * (args.steps + 1)  # one epoch of steps + 1 (the first step warms up)
    data = InMemoryImages(torch.randint(0, 256, (n, 3, 112, 112), dtype=torch.uint8),
                          torch.randint(0, args.classes, (n,)))
    sync(device)
    history = train_classifier(model, data, cfg, device=device,
                               loss_fn=lambda net, im, lab: F.cross_entropy(net(im, lab), lab))
    ours_train_s = history[0]["seconds"] / (args.steps + 1)

    model.eval()
    target = target_gradient(model, [(x, y)], device=device, logits_fn=model.logits)
    params = trainable_parameters(model)
    delta = torch.zeros_like(x, requires_grad=True)
    craft_cast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if args.craft_bf16 and amp \
        else contextlib.nullcontext

    def bare_craft() -> None:
        with craft_cast():
            loss = F.cross_entropy(model.logits(x + delta, y), y, reduction="sum")
        g = flat_grad(loss, params, create_graph=True)
        (grad,) = torch.autograd.grad(alignment_loss(target, g.float()), delta)
        with torch.no_grad():
            delta.sub_(0.5 / 255 * grad.sign()).clamp_(-8 / 255, 8 / 255)

    bare_craft_s = timed(bare_craft, args.steps, device)
    objective = create_objective("alignment", target)
    crafter = PoisonCrafter(model, objective, CrafterConfig(eps=8, steps=args.steps, augment="none"), device=device)
    crafter0 = PoisonCrafter(model, objective, CrafterConfig(eps=8, steps=0, augment="none"), device=device)
    call = timed(lambda: crafter(x, y, generator=torch.Generator().manual_seed(0)), 1, device)
    call0 = timed(lambda: crafter0(x, y, generator=torch.Generator().manual_seed(0)), 1, device)
    ours_craft_s = (call - call0) / args.steps
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU"
    result = {
        "device": device_name, "batch": args.batch, "width": args.width, "steps": args.steps,
        "train_precision": "bf16 autocast" if amp else "float32",
        "craft_precision": "bf16 autocast" if args.craft_bf16 and amp else "float32",
        "train_images_per_s": {"bare": args.batch / bare_train_s, "facepoison": args.batch / ours_train_s},
        "craft_image_steps_per_s": {"bare": args.batch / bare_craft_s, "facepoison": args.batch / ours_craft_s},
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python scripts/gpu_yardstick.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    result["ratios"] = {k: result[k]["facepoison"] / result[k]["bare"]
                        for k in ("train_images_per_s", "craft_image_steps_per_s")}
    text = json.dumps(result, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
