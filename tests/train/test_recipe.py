"""A recipe's `kind` picks the module that builds its job; pretraining is the default kind."""

import pytest

from lmstack.errors import ConfigError
from lmstack.train import pretrain
from lmstack.train.recipe import KINDS, build_job, kind_module, load_recipe, recipe_from_dict

MINIMAL = {"name": "r", "objective": "causal_lm", "model": {"preset": "gpt-tiny"}}


def test_kind_defaults_to_pretrain_and_names_its_module():
    recipe = recipe_from_dict(MINIMAL)
    assert recipe.kind == "pretrain" and isinstance(recipe, pretrain.Recipe)
    assert recipe_from_dict({**MINIMAL, "kind": "pretrain"}) == recipe
    assert kind_module("pretrain") is pretrain and set(KINDS) >= {"pretrain"}
    for path in ("recipes/pretrain_gpt_tiny.yaml", "recipes/pretrain_bert_tiny.yaml"):
        assert load_recipe(path).kind == "pretrain"


def test_an_unknown_kind_fails_fast_with_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"kind: 'distill' is not allowed\. Allowed values: 'pretrain'"):
        recipe_from_dict({**MINIMAL, "kind": "distill"})


def test_build_job_dispatches_on_the_kind(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(pretrain, "build_job", lambda recipe, run_dir, log: calls.append((recipe, run_dir)) or "job")
    recipe = recipe_from_dict(MINIMAL)
    assert build_job(recipe, tmp_path) == "job" and calls == [(recipe, tmp_path)]


def test_bitnet_section_is_validated_with_the_recipe():
    with pytest.raises(ConfigError, match="model.bitnet=true"):
        recipe_from_dict({**MINIMAL, "bitnet": {"quant_start": 0.5}})
    with pytest.raises(ConfigError, match="bitnet.quant_start"):
        recipe_from_dict({**MINIMAL, "model": {"preset": "gpt-tiny", "bitnet": True}, "bitnet": {"quant_start": 1}})
    with pytest.raises(ConfigError, match="bitnet_quant_start: unknown key"):  # the old train.* key is gone
        recipe_from_dict({**MINIMAL, "train": {"bitnet_quant_start": 0.5}})
