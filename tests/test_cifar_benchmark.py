"""scripts/cifar_benchmark.py on a tiny image folder (victims per seed, the defended victims, the Defenses table), and
scripts/gpu_yardstick.py at tiny sizes on CPU."""

import importlib.util
import json
import sys
from pathlib import Path

import yaml

from tests.conftest import write_image_folder

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "cifar_benchmark.py"


def load_script():
    spec = importlib.util.spec_from_file_location("cifar_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["cifar_benchmark"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_defenses_table_on_a_tiny_set(tmp_path):
    data = write_image_folder(tmp_path / "data", classes=2, per_class=8, size=16)
    train = {"epochs": 1, "batch_size": 8, "lr": 0.05}
    config = {"name": "tiny_cifar", "train_subset": None, "model": {"name": "resnet18", "width": 4},
              "surrogate": train, "victim": train, "victim_seeds": [0, 1], "craft": {"steps": 2},
              "craft_batch_size": 8, "target_samples": 8, "poisons": [["alignment", 16], ["random", 8]],
              "device": "cpu", "run_dir": str(tmp_path / "run"), "ratio_steps": 1, "ratio_trials": 1,
              "defenses": [{"name": "jpeg", "params": {"quality": 50}}, {"name": "cutout", "params": {"size": 4}}]}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    report = tmp_path / "tiny_cifar.md"
    assert load_script().main([str(path), "--data-root", str(data), "--report", str(report)]) == 0
    results = json.loads(report.with_suffix(".json").read_text())
    keys = set(results["victims"])
    for name in ("clean", "alignment_16", "random_8"):
        assert {f"{name}/seed0", f"{name}/seed1", f"{name}/jpeg_quality50/seed0", f"{name}/cutout_size4/seed0"} <= keys
    table = results["defenses"]
    assert [r["set"] for r in table["rows"]] == ["alignment_16", "random_8"]
    md = report.read_text()
    assert "## Defenses" in md and "| clean |" in md and "jpeg (quality=50)" in md
    # the undefended table lists each set once, from its undefended victims only
    assert sum(line.startswith("| clean |") for line in md.splitlines()) == 2  # main table + Defenses table


def test_gpu_yardstick_runs_tiny_on_cpu(tmp_path):
    """scripts/gpu_yardstick.py: the bare loops and facepoison's side by side (tiny sizes, CPU)."""
    spec = importlib.util.spec_from_file_location("gpu_yardstick", SCRIPT.parent / "gpu_yardstick.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "y.json"
    assert module.main(["--device", "cpu", "--batch", "4", "--width", "4", "--steps", "1", "--classes", "5",
                        "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    for key in ("train_images_per_s", "craft_image_steps_per_s"):
        assert result[key]["bare"] > 0 and result[key]["facepoison"] > 0 and result["ratios"][key] > 0
    assert result["train_precision"] == "float32" and result["device"].endswith("CPU")
