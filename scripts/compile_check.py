#!/usr/bin/env python
"""Does ``torch.compile`` run the crafter's double backward yet? (issue 14: "say if that changes")

Compiles a small conv net with each backend, takes the parameter gradient of a cross-entropy with
``create_graph=True`` (as the alignment objective does) and differentiates a function of it w.r.t. the input
perturbation. Prints one line per backend and writes the result as JSON.

Usage:
    python scripts/compile_check.py [--out docs/results/compile_check.json] [--backends aot_eager inductor]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn


def check(backend: str) -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 8 * 8, 4)).eval()
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    compiled = torch.compile(model, backend=backend)
    delta = torch.zeros_like(x, requires_grad=True)
    try:
        loss = nn.functional.cross_entropy(compiled(x + delta), y)
        grads = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
        (g,) = torch.autograd.grad(sum((t * t).sum() for t in grads), delta)
        return {"backend": backend, "double_backward": "works", "grad_abs_sum": float(g.abs().sum())}
    except Exception as exc:  # noqa: BLE001 - the point is to report whatever it raises
        return {"backend": backend, "double_backward": "fails",
                "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/results/compile_check.json")
    parser.add_argument("--backends", nargs="+", default=["aot_eager", "inductor"])
    args = parser.parse_args(argv)
    rows = [check(b) for b in args.backends]
    for r in rows:
        print(r["backend"], r["double_backward"], r.get("error", ""))
    result = {"torch": torch.__version__, "machine": f"{platform.machine()} {platform.system()}",
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": "python scripts/compile_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
