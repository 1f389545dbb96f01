"""facepoison.config: YAML/mapping → frozen dataclass configs through dacite (strict)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from facepoison.config import CraftCommandConfig, ModelConfig, TrainCommandConfig, from_mapping, load_config, to_dict
from facepoison.errors import UsageError


@dataclass(frozen=True)
class Item:
    name: str = ""
    weight: float = 1.0


@dataclass(frozen=True)
class Sample:
    names: tuple[str, ...] = ()
    folds: tuple[int, ...] = (1,)
    ratios: tuple[float, ...] = ()
    items: tuple[Item, ...] = ()
    models: Mapping[str, ModelConfig] = field(default_factory=dict)
    weights: Mapping[str, float] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    limit: int | None = 3
    note: str | None = "x"
    enabled: bool = False


@dataclass(frozen=True)
class Checked:
    size: int = 1

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"size must be >= 1,\ngot {self.size}")


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_tuple_of_strings_loads_strings():
    # Regression: the hand-written converter turned every non-int tuple element into a float.
    cfg = from_mapping(Sample, {"names": ["alice", "bob"]})
    assert cfg.names == ("alice", "bob")


def test_lists_become_tuples_and_ints_become_floats():
    cfg = from_mapping(Sample, {"folds": [1, 7], "ratios": [1, 0.5], "weights": {"l2": 2}})
    assert cfg.folds == (1, 7) and cfg.ratios == (1.0, 0.5) and cfg.weights == {"l2": 2.0}
    assert all(type(r) is float for r in cfg.ratios) and type(cfg.weights["l2"]) is float


def test_int_for_float_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("craft: {eps: 8, step_size: 1}\ntarget_fraction: 1\n")
    cfg = load_config(CraftCommandConfig, path, {})
    assert cfg.craft.eps == 8.0 and type(cfg.craft.eps) is float
    assert type(cfg.craft.step_size) is float and type(cfg.target_fraction) is float


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    # PyYAML (YAML 1.1) reads 5e-4 as the string "5e-4".
    path = tmp_path / "c.yaml"
    path.write_text("train: {weight_decay: 5e-4}\n")
    assert load_config(TrainCommandConfig, path, {}).train.weight_decay == pytest.approx(5e-4)


def test_tuple_of_dataclasses():
    cfg = from_mapping(Sample, {"items": [{"name": "a", "weight": 2}, {"name": "b"}]})
    assert cfg.items == (Item("a", 2.0), Item("b", 1.0))
    assert type(cfg.items[0].weight) is float


def test_mapping_of_dataclasses_and_plain_mappings():
    cfg = from_mapping(Sample, {"models": {"small": {"width": 16, "stem_stride": 2}, "big": {}},
                                "labels": {"a": "b"}})
    assert cfg.models == {"small": ModelConfig(width=16, stem_stride=2), "big": ModelConfig()}
    assert cfg.labels == {"a": "b"}


def test_null_for_optional():
    cfg = from_mapping(Sample, {"limit": None, "note": None})
    assert cfg.limit is None and cfg.note is None
    assert from_mapping(Sample, {"limit": 5}).limit == 5


def test_experiment_config_poisons_and_surrogates():
    from facepoison.experiment import ExperimentConfig

    cfg = from_mapping(ExperimentConfig, {
        "poisons": [{"objective": "alignment", "eps": 8}, {"objective": "random", "eps": 16.0}],
        "surrogates": {"resnet50": {"name": "resnet50", "width": 16}},
        "data": {"train_folds": [1, 7]}, "lfw": None})
    assert [(p.objective, p.eps) for p in cfg.poisons] == [("alignment", 8.0), ("random", 16.0)]
    assert type(cfg.poisons[0].eps) is float
    assert cfg.surrogates["resnet50"].width == 16 and cfg.data.train_folds == (1, 7) and cfg.lfw is None
    with pytest.raises(UsageError, match=r"poisons\[1\]\.epz"):
        from_mapping(ExperimentConfig, {"poisons": [{"eps": 8}, {"epz": 8}]})
    with pytest.raises(UsageError, match=r"surrogates\.r18\.widht"):
        from_mapping(ExperimentConfig, {"surrogates": {"r18": {"widht": 8}}})


def test_unknown_nested_key_names_dotted_key_and_valid_ones(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("craft: {stepz: 7}\n")
    with pytest.raises(UsageError) as exc:
        load_config(CraftCommandConfig, path, {})
    text = one_line(exc)
    assert "craft.stepz" in text and "craft.steps" in text and "craft.eps" in text
    with pytest.raises(UsageError) as exc:
        from_mapping(CraftCommandConfig, {"bogus": 1, "objective": "random"})
    assert "bogus" in one_line(exc) and "objective" in str(exc.value)


def test_prefix_goes_into_messages():
    with pytest.raises(UsageError, match=r"outer\.bogus"):
        from_mapping(Sample, {"bogus": 1}, prefix="outer.")
    with pytest.raises(UsageError, match=r"outer\.enabled"):
        from_mapping(Sample, {"enabled": "yes"}, prefix="outer.")


@pytest.mark.parametrize(("data", "key"), [
    ({"craft": {"independent": "yes"}}, "craft.independent"),
    ({"craft": {"steps": "abc"}}, "craft.steps"),
    ({"craft": {"steps": True}}, "craft.steps"),
    ({"craft": {"eps": "eight"}}, "craft.eps"),
    ({"craft": {"milestones": 0.5}}, "craft.milestones"),
    ({"craft": {"milestones": [0.5, "x"]}}, "craft.milestones"),
    ({"craft": {"regularizers": ["l2"]}}, "craft.regularizers"),
    ({"craft": 5}, "craft"),
    ({"target_samples": "many"}, "target_samples"),
])
def test_wrong_type_names_the_key(data, key):
    with pytest.raises(UsageError) as exc:
        from_mapping(CraftCommandConfig, data)
    assert repr(key) in one_line(exc)


def test_string_for_string_tuple_is_not_split_into_characters():
    with pytest.raises(UsageError, match="'names'"):
        from_mapping(Sample, {"names": "alice"})


def test_post_init_value_error_is_one_line_usage_error():
    with pytest.raises(UsageError, match="size must be >= 1") as exc:
        from_mapping(Checked, {"size": 0})
    one_line(exc)
    with pytest.raises(UsageError, match="eps"):
        from_mapping(CraftCommandConfig, {"craft": {"eps": 300}})


def test_to_dict_is_json_able_and_round_trips():
    cfg = from_mapping(Sample, {"names": ["a"], "items": [{"name": "b"}], "models": {"m": {"width": 8}}})
    d = to_dict(cfg)
    assert d["names"] == ["a"] and d["items"] == [{"name": "b", "weight": 1.0}]
    assert json.loads(json.dumps(d)) == d
    assert from_mapping(Sample, d) == cfg


def test_overrides_replace_yaml_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("craft: {steps: 7}\ndata: {root: a}\n")
    cfg = load_config(CraftCommandConfig, path, {"craft.steps": 9, "data.root": None, "craft.restarts": 2})
    assert cfg.craft.steps == 9 and cfg.data.root == "a" and cfg.craft.restarts == 2
    assert load_config(CraftCommandConfig, None, {"objective": "random"}).objective == "random"
