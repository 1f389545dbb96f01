#!/usr/bin/env python
"""CIFAR-10 benchmark of the crafting core: victim test accuracy after training on poisons.

Trains a surrogate on the clean training subset, crafts alignment / TensorClog / random-noise poisons,
trains victims from scratch on each poisoned set (several seeds), and measures the cost of a crafting
step against a training step on the same batch. Every stage is cached under ``run_dir``, so an
interrupted run resumes; the report is regenerated from the cached results.

With ``defenses:`` in the config, one more victim (the first seed) is trained per defense on the clean set and on
each poisoned set, and the report gains a Defenses table: each victim's accuracy and the retained protection
(drop under the defense / drop without it), with the worst case (see ``facepoison.defenses.table``).

Usage:
    python scripts/cifar_benchmark.py configs/cifar_cpu.yaml [--data-root ../shared/data/cifar10]
    python scripts/cifar_benchmark.py configs/cifar_defenses.yaml --data-root ../shared/data/cifar10
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from facepoison.config import (
    CraftCommandConfig,
    DataConfig,
    DefenseSpec,
    ModelConfig,
    TrainCommandConfig,
    load_config,
    to_dict,
)
from facepoison.crafter import CrafterConfig, PoisonCrafter
from facepoison.crafting import craft_store
from facepoison.data import load_dataset
from facepoison.defenses.table import defense_markdown, defense_table, worst_sentence
from facepoison.losses import target_gradient
from facepoison.objectives import create_objective
from facepoison.provenance import code_revision
from facepoison.runtime import load_classifier, resolve_device
from facepoison.training import train_checkpoint
from recognition.train import TrainConfig, make_optimizer

log = logging.getLogger("cifar_benchmark")


@dataclass(frozen=True)
class BenchmarkConfig:
    name: str = "cifar_cpu"
    data_root: str = ""
    train_subset: int | None = 5000
    test_subset: int | None = None
    subset_seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    surrogate: TrainConfig = field(default_factory=TrainConfig)
    victim: TrainConfig = field(default_factory=TrainConfig)
    victim_seeds: tuple[float, ...] = (0, 1)
    craft: CrafterConfig = field(default_factory=CrafterConfig)
    craft_batch_size: int = 128
    target_samples: int | None = 2000
    poisons: tuple = (("alignment", 8), ("alignment", 16), ("tensorclog", 8), ("random", 8))
    device: str = "auto"
    run_dir: str = "runs/cifar_cpu"
    time_budget_s: float | None = None
    ratio_steps: int = 4
    ratio_trials: int = 5
    defenses: tuple[DefenseSpec, ...] = ()


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}"


def measure_step_ratio(cfg: BenchmarkConfig, model: torch.nn.Module, data, device: torch.device) -> dict:
    """Seconds per training step and per crafting step (alignment, same batch, same model), and their ratio.

    A crafting step is timed as (crafter call with k steps - call with 0 steps) / k, which removes the
    one-off work of a call (start point, final-loss evaluation).
    """
    images, labels = data.get_batch(range(cfg.craft_batch_size))
    x, y = images.float().div(255), labels
    target = target_gradient(model, [(x, y)], device=device)
    objective = create_objective("alignment", target)
    k = cfg.ratio_steps
    crafters = [PoisonCrafter(model, objective, dataclasses.replace(cfg.craft, steps=s), device=device) for s in (0, k)]
    train_model = copy.deepcopy(model).to(device)  # training steps must not change the surrogate
    opt = make_optimizer(train_model, cfg.victim)
    xd, yd = x.to(device), y.to(device)

    def train_step() -> None:
        train_model.train()
        loss = F.cross_entropy(train_model(xd), yd)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def timed(fn, reps: int) -> float:
        fn()  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / reps

    # Timings on a shared CPU drift by ±10%: interleave the two measurements over several trials and
    # report the median ratio with its range.
    trials = []
    for _ in range(cfg.ratio_trials):
        train_s = timed(train_step, 2 * k)
        call0 = timed(lambda: crafters[0](x, y, generator=torch.Generator().manual_seed(0)), 2)
        callk = timed(lambda: crafters[1](x, y, generator=torch.Generator().manual_seed(0)), 2)
        trials.append((train_s, (callk - call0) / k))
    ratios = sorted(c / t for t, c in trials)
    train_s = statistics.median(t for t, _ in trials)
    craft_s = statistics.median(c for _, c in trials)
    return {"batch": cfg.craft_batch_size, "train_step_s": train_s, "craft_step_s": craft_s,
            "ratio": statistics.median(ratios), "ratio_min": ratios[0], "ratio_max": ratios[-1],
            "trials": len(trials), "image_steps_per_s": cfg.craft_batch_size / craft_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--data-root", help="CIFAR-10 folder (default: data_root in the config, or FACEPOISON_DATA)")
    parser.add_argument("--run-dir")
    parser.add_argument("--device")
    parser.add_argument("--report", help="markdown report to write (default docs/results/<name>.md)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    parser.add_argument("--results", help="only render the report from this results.json (no training)")
    args = parser.parse_args(argv)
    if args.results:
        results = json.loads(Path(args.results).read_text())
        report = Path(args.report or f"docs/results/{results['config']['name']}.md")
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(render_report(results, args.config))
        print(report.read_text())
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    data_root = args.data_root or os.environ.get("FACEPOISON_DATA")
    cfg = load_config(BenchmarkConfig, args.config, {"data_root": data_root, "run_dir": args.run_dir,
                                                     "device": args.device})
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(cfg.device)  # on CUDA also cuDNN autotuning and TF32 (facepoison.runtime.tune_cuda)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    results_path = run_dir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"victims": {}, "crafting": {}}
    started = time.perf_counter()
    results["skipped"] = []  # recomputed by this run: what it had to leave out

    def save() -> None:
        results.update({"config": to_dict(cfg), "machine": machine_name(device), "code_revision": code_revision()})
        tmp = results_path.with_name("results.json.tmp")
        tmp.write_text(json.dumps(results, indent=2))
        os.replace(tmp, results_path)

    def over_budget() -> bool:
        return cfg.time_budget_s is not None and time.perf_counter() - started > cfg.time_budget_s

    t0 = time.perf_counter()
    data_cfg = DataConfig(root=cfg.data_root, subset=cfg.train_subset, subset_seed=cfg.subset_seed)
    train = load_dataset(cfg.data_root, "train", subset=cfg.train_subset, seed=cfg.subset_seed)
    test = load_dataset(cfg.data_root, "test", subset=cfg.test_subset, seed=cfg.subset_seed)
    results["data"] = {"train": len(train), "test": len(test), "load_s": time.perf_counter() - t0}
    log.info("data: %d train, %d test", len(train), len(test))

    surrogate_path = run_dir / "surrogate.pt"
    if not surrogate_path.exists():
        sur_cfg = TrainCommandConfig(data=data_cfg, model=cfg.model, train=cfg.surrogate, device=str(device))
        meta = train_checkpoint(sur_cfg, train, test, surrogate_path, device)
        results["surrogate"] = {"test_accuracy": meta["test_accuracy"], "train_seconds": meta["train_seconds"]}
        save()
    surrogate, sur_meta = load_classifier(str(surrogate_path))
    surrogate.to(device)
    log.info("surrogate: %.4f", sur_meta["test_accuracy"])
    if "step_ratio" not in results:
        results["step_ratio"] = measure_step_ratio(cfg, surrogate, train, device)
        save()
    log.info("step ratio: %s", results["step_ratio"])

    def poison_path(objective: str, eps: float) -> Path:
        return run_dir / f"poison_{objective}_{eps:g}.h5"

    def ensure_poisons(objective: str, eps: float) -> Path:
        path = poison_path(objective, eps)
        if path.exists():
            return path
        craft_cfg = CraftCommandConfig(
            data=data_cfg, craft=dataclasses.replace(cfg.craft, eps=float(eps)), objective=objective,
            surrogate=str(surrogate_path), target_samples=cfg.target_samples, batch_size=cfg.craft_batch_size,
            device=str(device))
        report = craft_store(craft_cfg, train, surrogate, sur_meta, path, device)
        results["crafting"][f"{objective}_{eps:g}"] = report
        save()
        log.info("crafted %s: %s", path.name, report)
        return path

    sets = [("clean", None, None)] + [(f"{o}_{e:g}", o, float(e)) for o, e in cfg.poisons]
    for spec in cfg.defenses:
        spec.build()  # a bad defense fails before any victim
    runs = [(seed, None) for seed in cfg.victim_seeds] + [(cfg.victim_seeds[0], spec) for spec in cfg.defenses]
    for seed, defense in runs:
        for name, objective, eps in sets:
            tag = f"/{defense.key}" if defense else ""
            key = f"{name}{tag}/seed{int(seed)}"
            if key in results["victims"]:
                continue
            if over_budget():
                log.info("time budget spent; skipping %s", key)
                results["skipped"].append(key)
                continue
            poisons = str(ensure_poisons(objective, eps)) if objective else None
            vic_cfg = TrainCommandConfig(data=data_cfg, model=cfg.model,
                                         train=dataclasses.replace(cfg.victim, seed=int(seed)),
                                         poisons=poisons, device=str(device), defense=defense)
            out = run_dir / f"victim_{name}{tag.replace('/', '_')}_s{int(seed)}.pt"
            meta = train_checkpoint(vic_cfg, train, test, out, device, fresh=not out.with_name(
                out.name + ".resume.pt").exists())
            results["victims"][key] = {"test_accuracy": meta["test_accuracy"], "train_seconds": meta["train_seconds"],
                                       "train_accuracy": meta["train_accuracy"]}
            out.unlink()  # keep the run folder small; the accuracy is what the report needs
            save()
            log.info("victim %s: %.4f", key, meta["test_accuracy"])
    results["total_seconds"] = results.get("total_seconds", 0) + time.perf_counter() - started
    results["finished"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    save()
    report = Path(args.report or f"docs/results/{cfg.name}.md")
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(render_report(results, args.config))
    report.with_suffix(".json").write_text(json.dumps(results, indent=2))
    print(report.read_text())
    return 0


def defenses_markdown(results: dict) -> list[str]:
    """The Defenses section: per poisoned set and defense, the victim's test accuracy and the retained protection."""
    specs = [DefenseSpec(d["name"], d.get("params") or {}, d.get("title")) for d in results["config"].get("defenses")
             or []]
    if not specs:
        return []
    first = int(results["config"]["victim_seeds"][0])
    acc: dict[tuple[str, str | None], list[float]] = {}
    for key, rec in results["victims"].items():
        parts = key.split("/")
        name, defense = parts[0], parts[1] if len(parts) == 3 else None
        acc.setdefault((name, defense), []).append(rec["test_accuracy"])
    poisoned = [f"{o}_{e:g}" for o, e in results["config"]["poisons"]]
    table = defense_table(poisoned, {p: p for p in poisoned}, [(d.key, d.label) for d in specs],
                          lambda k: statistics.mean(acc[k]) if acc.get(k) else None)
    results["defenses"] = table
    return ["", "## Defenses: how much protection survives", "",
            f"Test accuracy (%) of victims trained with each defense (seed {first}) on the clean set and on each "
            "poisoned set; \"no defense\" is the mean over the victim seeds. The drop is the defended clean victim's "
            "accuracy minus the defended poisoned victim's; kept = that drop / the drop without the defense. One "
            "victim per cell (seed-to-seed spread of the undefended victims above).", "",
            defense_markdown(table, "accuracy"), "", worst_sentence(table, "accuracy")]


def render_report(results: dict, config_path: str) -> str:
    cfg = results["config"]
    by_set: dict[str, list[float]] = {}
    for key, rec in results["victims"].items():
        if key.count("/") == 1:  # undefended victims (defended ones are "set/defense/seed")
            by_set.setdefault(key.split("/")[0], []).append(rec["test_accuracy"])
    clean = statistics.mean(by_set["clean"]) if "clean" in by_set else None
    lines = [
        f"# CIFAR-10 benchmark: `{cfg['name']}`",
        "",
        f"Generated by `python scripts/cifar_benchmark.py {config_path}` on {results['machine']}, "
        f"finished {results.get('finished', '?')}, code {results['code_revision']}. Do not edit by hand.",
        "",
        f"Data: {results['data']['train']} training images (class-balanced subset of ../shared/data/cifar10), "
        f"{results['data']['test']} test images. Model: {cfg['model']['name']} width {cfg['model']['width']}. "
        f"Surrogate: {cfg['surrogate']['epochs']} epochs, test accuracy "
        f"{results.get('surrogate', {}).get('test_accuracy', float('nan')):.1%}. Victims: "
        f"{cfg['victim']['epochs']} epochs from scratch, seeds {', '.join(str(int(s)) for s in cfg['victim_seeds'])}. "
        f"Crafting: {cfg['craft']['steps']} signed-Adam steps, {cfg['craft']['restarts']} restart(s), "
        f"step {cfg['craft']['step_size']}·ε, augmentation {cfg['craft']['augment']}, target gradient from "
        f"{cfg['target_samples']} images.",
        "",
        "| victim trained on | test accuracy (per seed) | mean | drop from clean |",
        "|---|---|---|---|",
    ]
    for name, accs in by_set.items():
        mean = statistics.mean(accs)
        drop = "" if clean is None or name == "clean" else f"{(clean - mean) * 100:+.1f} pts".replace("+", "−", 1)
        if clean is not None and name != "clean" and clean - mean < 0:
            drop = f"+{(mean - clean) * 100:.1f} pts (higher)"
        lines.append(f"| {name} | {', '.join(f'{a:.1%}' for a in accs)} | {mean:.1%} | {drop} |")
    sr = results.get("step_ratio")
    if sr:
        precision = "bfloat16 autocast" if cfg["victim"].get("amp") else "float32"
        lines += ["", f"Cost of one crafting step (alignment, batch {sr['batch']}, float32): "
                  f"{sr['craft_step_s']:.3f} s vs {sr['train_step_s']:.3f} s for a training step on the same batch "
                  f"({precision}, the victims' setting): **ratio {sr['ratio']:.2f}×**"
                  + (f" (median of {sr['trials']} trials, range {sr['ratio_min']:.2f}–{sr['ratio_max']:.2f})."
                     if "trials" in sr else ".")]
    crafting = results.get("crafting", {})
    if crafting:
        lines += ["", "| poison set | crafting seconds | image-steps/s |", "|---|---|---|"]
        for name, rep in crafting.items():
            lines.append(f"| {name} | {rep['craft_seconds']:.0f} | {rep['image_steps_per_s'] or '—'} |")
    lines += defenses_markdown(results)
    if results.get("skipped"):
        lines += ["", f"Skipped for lack of time: {', '.join(results['skipped'])}."]
    lines += ["", f"Total wall time: {results.get('total_seconds', 0) / 60:.1f} min.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
