#!/usr/bin/env python
"""The yardstick for facepoison's speed: the same model, batch and precision as a bare eager PyTorch loop, side by
side with facepoison's own training loop and crafter, in one run on one device.

- training: a CosFace ResNet-18 face recognizer (width 64, 112×112, batch 256 by default), SGD, bf16 autocast on
  CUDA; the bare loop keeps the batch on the device and does no host sync per step; facepoison's
  ``recognition.train.train_classifier`` runs on an in-memory uint8 set of the same size (its augmentation
  included).
- crafting: the alignment objective, one double backward per step (float32; ``--craft-bf16`` for bf16 autocast in
  both loops, ``CrafterConfig(precision="bfloat16")`` on facepoison's side), the bare loop against
  ``facepoison.crafter.PoisonCrafter`` (augmentation off in both, to compare the same work).
- ``--preset cifar``: the CIFAR-10 ResNet-18 (width 64, 32×32, 10 classes, plain cross-entropy) instead of the face
  recognizer, and the projected time of the paper's CIFAR-10 craft (50,000 images × 240 steps) at facepoison's
  measured crafting rate.

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
from facepoison.runtime import resolve_device
from recognition.heads import create_recognizer
from recognition.models import create_model
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
    p.add_argument("--preset", choices=["faces", "cifar"], default="faces")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--classes", type=int, default=447)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--craft-bf16", action="store_true")
    p.add_argument("--channels-last", action="store_true",
                   help="train in the channels-last layout, in both loops (crafting stays in the default layout)")
    p.add_argument("--profile", action="store_true",
                   help="also torch.profiler tables (top operators by self device time) of 3 training and 3 crafting "
                        "steps of the bare loops")
    p.add_argument("--out")
    args = p.parse_args(argv)
    device = resolve_device(args.device)  # on CUDA also cuDNN autotuning and TF32, as facepoison's commands run
    if args.channels_last and device.type != "cuda" and args.preset == "faces":
        p.error("--channels-last is for CUDA: torch's CPU backward of the face blocks crashes in that layout")
    amp = device.type == "cuda"
    torch.manual_seed(0)
    faces = args.preset == "faces"
    classes, size = (args.classes, 112) if faces else (10, 32)
    if faces:
        model = create_recognizer("resnet18", classes, width=args.width).to(device)

        def forward(net, im, lab):
            return net(im, lab)

        def logits(im, lab):
            return model.logits(im, lab)
    else:
        model = create_model("resnet18", classes, width=args.width).to(device)

        def forward(net, im, lab):
            return net(im)

        def logits(im, lab):
            return model(im)
    x = torch.rand(args.batch, 3, size, size, device=device)
    y = torch.randint(0, classes, (args.batch,), device=device)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else contextlib.nullcontext
    cfg = TrainConfig(epochs=1, batch_size=args.batch, lr=0.01, amp=amp, crop_padding=4, flip=True)
    opt = make_optimizer(model, cfg)
    x_train = x
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
        x_train = x.contiguous(memory_format=torch.channels_last)

    def bare_train() -> None:
        with autocast():
            loss = F.cross_entropy(forward(model, x_train, y), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    bare_train_s = timed(bare_train, args.steps, device)
    n = args.batch * (args.steps + 1)  # one epoch of steps + 1 (the first step warms up)
    data = InMemoryImages(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8),
                          torch.randint(0, classes, (n,)))
    sync(device)
    history = train_classifier(model, data, cfg, device=device,
                               loss_fn=lambda net, im, lab: F.cross_entropy(forward(net, im, lab), lab),
                               channels_last=args.channels_last)
    ours_train_s = history[0]["seconds"] / (args.steps + 1)

    model.eval()
    target = target_gradient(model, [(x, y)], device=device, logits_fn=logits).to(device)
    params = trainable_parameters(model)
    delta = torch.zeros_like(x, requires_grad=True)
    craft_cast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.craft_bf16 \
        else contextlib.nullcontext

    def bare_craft() -> None:
        with craft_cast():
            loss = F.cross_entropy(logits(x + delta, y), y, reduction="sum")
        g = flat_grad(loss, params, create_graph=True)
        (grad,) = torch.autograd.grad(alignment_loss(target, g.float()), delta)
        with torch.no_grad():
            delta.sub_(0.5 / 255 * grad.sign()).clamp_(-8 / 255, 8 / 255)

    bare_craft_s = timed(bare_craft, args.steps, device)
    objective = create_objective("alignment", target)
    precision = "bfloat16" if args.craft_bf16 else "float32"
    crafter, crafter0 = (PoisonCrafter(model, objective, CrafterConfig(eps=8, steps=steps, augment="none",
                                                                       precision=precision), logits_fn=logits,
                                       device=device) for steps in (args.steps, 0))
    call = timed(lambda: crafter(x, y, generator=torch.Generator().manual_seed(0)), 1, device)
    call0 = timed(lambda: crafter0(x, y, generator=torch.Generator().manual_seed(0)), 1, device)
    ours_craft_s = (call - call0) / args.steps
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU"
    result = {
        "device": device_name, "preset": args.preset, "batch": args.batch, "width": args.width, "steps": args.steps,
        "train_precision": "bf16 autocast" if amp else "float32", "channels_last": args.channels_last,
        "craft_precision": "bf16 autocast" if args.craft_bf16 else "float32",
        "train_images_per_s": {"bare": args.batch / bare_train_s, "facepoison": args.batch / ours_train_s},
        "craft_image_steps_per_s": {"bare": args.batch / bare_craft_s, "facepoison": args.batch / ours_craft_s},
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python scripts/gpu_yardstick.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        result["profile"] = {}
        for name, fn in (("train_step", bare_train), ("craft_step", bare_craft)):
            with profile(activities=activities) as prof:
                for _ in range(3):
                    fn()
                sync(device)
            result["profile"][name] = prof.key_averages().table(sort_by=sort, row_limit=15)
    if not faces:
        # the paper's CIFAR-10 craft, 50,000 images × 240 steps, at the measured crafting rate
        result["paper_cifar_craft_minutes"] = 50_000 * 240 / result["craft_image_steps_per_s"]["facepoison"] / 60
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
