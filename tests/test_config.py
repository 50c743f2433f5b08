from dataclasses import dataclass, field
from typing import Literal

import pytest

from lmstack.config import apply_overrides, from_dict, load_yaml
from lmstack.errors import ConfigError
from lmstack.models import model_config, model_config_from_dict
from lmstack.train.recipe import load_recipe, recipe_from_dict


@dataclass(frozen=True)
class Inner:
    rate: float = 0.1
    mode: Literal["a", "b"] = "a"


@dataclass(frozen=True)
class Outer:
    name: str
    steps: int = 3
    tags: tuple[str, ...] = ()
    inner: Inner = field(default_factory=Inner)
    maybe: int | None = None


def test_valid_dict_and_defaults():
    cfg = from_dict(Outer, {"name": "x", "inner": {"rate": "1e-3"}, "tags": ["p", "q"]})
    assert cfg == Outer(name="x", inner=Inner(rate=1e-3), tags=("p", "q"))


@pytest.mark.parametrize(
    "data, message",
    [
        ({"name": "x", "stepz": 1}, r"stepz: unknown key\. Allowed keys in Outer: inner, maybe, name, steps, tags"),
        ({"name": "x", "inner": {"mode": "c"}}, r"inner\.mode: 'c' is not allowed\. Allowed values: 'a', 'b'"),
        ({"name": "x", "steps": "many"}, r"steps: expected an integer, got 'many'"),
        ({"name": "x", "steps": True}, r"steps: expected an integer"),
        ({"steps": 1}, r"name: required key is missing"),
        ({"name": "x", "inner": 5}, r"inner: expected a mapping"),
        ({"name": "x", "tags": "p"}, r"tags: expected a list"),
    ],
)
def test_errors_name_the_key_and_allowed_values(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data)


def test_overrides():
    data = apply_overrides({"train": {"steps": 5}}, ["train.steps=10", "train.lr=3e-4", "model.preset=gpt-tiny"])
    assert data == {"train": {"steps": 10, "lr": 3e-4}, "model": {"preset": "gpt-tiny"}}
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["train.steps"])
    with pytest.raises(ConfigError, match="is a value"):
        apply_overrides({"a": 1}, ["a.b=2"])


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_yaml(bad)
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")


def test_model_presets_and_validation():
    assert model_config("smollm2-135m").kv_heads == 3
    with pytest.raises(ConfigError, match="model.preset: unknown preset 'gpt5'. Allowed values: gpt2-124m"):
        model_config_from_dict({"preset": "gpt5"})
    with pytest.raises(ConfigError, match="divisible"):
        model_config("gpt-tiny", n_heads=5)
    with pytest.raises(ConfigError, match="model.mlp: 'tanh' is not allowed"):
        model_config_from_dict({"preset": "gpt-tiny", "mlp": "tanh"})


def test_recipe_validation():
    with pytest.raises(ConfigError, match="objective 'masked_lm' trains a encoder model"):
        recipe_from_dict({"name": "x", "objective": "masked_lm", "model": {"preset": "gpt-tiny"}})
    with pytest.raises(ConfigError, match="train.batch_size .* multiple of train.grad_accum"):
        recipe_from_dict(
            {
                "name": "x",
                "objective": "causal_lm",
                "model": {"preset": "gpt-tiny"},
                "train": {"batch_size": 5, "grad_accum": 2},
            }
        )
    with pytest.raises(ConfigError, match="objective: 'clm' is not allowed"):
        recipe_from_dict({"name": "x", "objective": "clm", "model": {"preset": "gpt-tiny"}})


@pytest.mark.parametrize("name", ["pretrain_gpt_tiny", "pretrain_bert_tiny", "pretrain_t5_tiny"])
def test_shipped_recipes_validate(name):
    recipe = load_recipe(f"recipes/{name}.yaml", ["train.steps=3"])
    assert recipe.train.steps == 3 and recipe.name == name
