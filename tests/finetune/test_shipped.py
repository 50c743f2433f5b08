"""The adapters that ship in the package load on their base and do their job."""

import json

import pytest
import torch

from lmstack.finetune.load import SHIPPED, load_finetuned, shipped_adapter
from lmstack.finetune.lora import lora_layers

pytestmark = pytest.mark.real_model


@pytest.mark.parametrize("name", list(SHIPPED))
def test_each_shipped_adapter_is_in_the_package_with_its_recipe(name):
    path = shipped_adapter(name)
    config = json.loads((path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == "smollm2"
    readme = (path / "README.md").read_text()
    assert "lmstack finetune recipes/" in readme  # the command that reproduces it
    assert (path / "adapter_model.safetensors").stat().st_size < 8 * 2**20  # a few MB


@pytest.mark.parametrize("name", list(SHIPPED))
def test_each_shipped_adapter_loads_on_smollm2_and_changes_it(name):
    tuned, tok = load_finetuned("smollm2", {name: shipped_adapter(name)})
    assert len(lora_layers(tuned)) == 30 * 4  # every linear of the 30 blocks (qkv, o, gate|up, down)
    plain, _ = load_finetuned("smollm2")
    ids = torch.tensor([tok.encode("Q: Tom has 3 boxes of 12 pencils. How many pencils?")])
    with torch.no_grad():
        assert not torch.allclose(tuned(ids), plain(ids), atol=1e-3)


def test_lmstack_pal_uses_the_adapter_by_default(capsys):
    """The default model + the shipped adapter writes a program for a held-out problem that the sandbox runs."""
    from lmstack.cli import main
    from lmstack.data.tasks import generate

    item = generate("math_word", 1, seed=0, split="test")["items"][0]
    code = main(["pal", item["question"], "--show-programs", "--max-new-tokens", "200"])
    out = capsys.readouterr().out
    assert "def solution():" in out and "=> " in out
    assert out.strip().splitlines()[-1].startswith("answer: ") and code == 0
