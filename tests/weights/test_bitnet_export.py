import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lmstack.cli import main
from lmstack.errors import CheckpointError
from lmstack.models.bitnet import PACKING_BASE3, BitLinear, PackedBitLinear, bitnet_state, linear_weight_bytes
from lmstack.train.loop import train
from lmstack.train.recipe import build_job, load_recipe
from lmstack.weights.bitnet_export import export_bitnet
from lmstack.weights.checkpoint import verify_checkpoint
from lmstack.weights.load import load_model_for_inference
from lmstack.weights.packed import prepare_packed, quantization_entry

TINY = [
    "data.source=files",
    "data.seq_len=32",
    "data.val_fraction=0.2",
    "tokenizer.vocab_size=300",
    "model.d_model=32",
    "model.n_layers=2",
    "model.n_heads=4",
    "model.n_kv_heads=2",
    "model.d_ff=64",
    "train.steps=4",
    "train.batch_size=4",
    "train.warmup_steps=1",
    "train.eval_every=0",
    "train.eval_batches=1",
    "train.progress=false",
]


def _train(corpus: Path, out: Path, bitnet: bool) -> Path:
    recipe = load_recipe(
        "recipes/pretrain_bitnet_tiny.yaml",
        [*TINY, f"out_dir={out}", f"data.paths=[{corpus}]", f"model.bitnet={str(bitnet).lower()}"],
    )
    job, _ = build_job(recipe, out, log=lambda m: None)
    train(job, recipe.train, out, log=lambda m: None)
    return out


@pytest.fixture
def bitnet_run(text_corpus, tmp_path) -> Path:
    return _train(text_corpus, tmp_path / "run", bitnet=True)


def test_quantize_cli_writes_a_packed_checkpoint_that_loads_and_matches(bitnet_run, tmp_path, capsys):
    out = tmp_path / "packed"
    assert main(["quantize", "--bitnet", str(bitnet_run), str(out)]) == 0
    assert "smaller" in capsys.readouterr().out
    assert verify_checkpoint(out) is None
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"]["method"] == "bitnet_b1.58" and config["model"]["bitnet"] is True

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        packed = f.get_tensor("layers.0.attn.qkv_proj.weight_packed")
        scale = f.get_tensor("layers.0.attn.qkv_proj.weight_scale")
    assert "layers.0.attn.qkv_proj.weight" not in keys and "embed.tokens.weight" in keys
    assert packed.dtype == torch.uint8 and packed.shape == (64, 8)  # (q + 2 kv) rows × 32 / 4 bytes
    assert scale.dtype == torch.float32

    trained, tok = load_model_for_inference(bitnet_run)
    loaded, tok2 = load_model_for_inference(out)
    assert bitnet_state(trained)["bitlinear"] == 8 and bitnet_state(loaded)["packed"] == 8
    assert tok2.vocab_size == tok.vocab_size
    ids = torch.tensor([tok.encode("alpha beta gamma delta")])
    with torch.no_grad():
        assert torch.equal(loaded(ids), trained(ids))
    layer = trained.layers[0].attn.qkv_proj
    q, k, v = layer.weight.detach().split([32, 16, 16])  # one γ per part of the fused projection
    assert scale.tolist() == [float(q.abs().mean()), float(k.abs().mean()), float(v.abs().mean())]
    source_bytes = (bitnet_run / "step-00000004" / "model.safetensors").stat().st_size
    assert (out / "model.safetensors").stat().st_size < source_bytes


def test_generate_runs_on_the_packed_checkpoint(bitnet_run, tmp_path, capsys):
    out = tmp_path / "packed"
    export_bitnet(bitnet_run, out)
    capsys.readouterr()
    greedy = ["--prompt", "alpha", "--max-new-tokens", "5", "--temperature", "0"]
    assert main(["generate", "--model", str(out), *greedy]) == 0
    packed_text = capsys.readouterr().out
    assert main(["generate", "--model", str(bitnet_run), *greedy]) == 0
    assert packed_text == capsys.readouterr().out and packed_text.endswith("\n")  # same greedy continuation


def test_load_pretrained_reads_packed_checkpoints(bitnet_run, tmp_path):
    load = pytest.importorskip("lmstack.weights.load")
    out = tmp_path / "packed"
    export_bitnet(bitnet_run, out)
    model, _ = load.load_pretrained(str(out))
    assert any(isinstance(m, PackedBitLinear) for m in model.modules())
    assert not any(isinstance(m, BitLinear) for m in model.modules())


def test_quantize_refuses_bad_inputs(bitnet_run, text_corpus, tmp_path, capsys):
    fp_run = _train(text_corpus, tmp_path / "fp", bitnet=False)
    with pytest.raises(CheckpointError, match="model.bitnet=true"):
        export_bitnet(fp_run, tmp_path / "fp_packed")
    assert main(["quantize", "--bitnet", str(fp_run), str(tmp_path / "x")]) == 2
    assert "full-precision" in capsys.readouterr().err
    assert not (tmp_path / "fp_packed").exists() and not (tmp_path / "x").exists()

    out = tmp_path / "packed"
    export_bitnet(bitnet_run, out)
    with pytest.raises(CheckpointError, match="already exists"):
        export_bitnet(bitnet_run, out)
    with pytest.raises(CheckpointError, match="already quantized"):
        export_bitnet(out, tmp_path / "twice")
    with pytest.raises(SystemExit):  # a method flag is required
        main(["quantize", str(bitnet_run), str(tmp_path / "y")])
    assert not list(tmp_path.glob(".tmp-*"))


def test_unknown_quantization_entries_fail_clearly():
    from lmstack.models import build_model
    from testutil import tiny_config

    model = build_model(tiny_config("llama-tiny", bitnet=True))
    with pytest.raises(CheckpointError, match="unknown quantization"):
        prepare_packed(model, {"method": "gptq"})
    with pytest.raises(CheckpointError, match="unknown packing"):
        prepare_packed(model, {"method": "bitnet_b1.58", "format": "3-bits-per-weight"})
    assert bitnet_state(prepare_packed(model, quantization_entry()))["packed"] == 8
    with pytest.raises(CheckpointError, match="unknown packing"):
        export_bitnet("unused", "unused", packing="3-bits-per-weight")


def test_base3_packing_is_smaller_and_loads_to_the_same_model(bitnet_run, tmp_path, capsys):
    two_bit, base3 = tmp_path / "two_bit", tmp_path / "base3"
    export_bitnet(bitnet_run, two_bit)
    assert main(["quantize", "--bitnet", str(bitnet_run), str(base3), "--packing", "base3"]) == 0
    assert "smaller" in capsys.readouterr().out
    config = json.loads((base3 / "config.json").read_text())
    assert config["quantization"]["format"] == PACKING_BASE3
    with safe_open(str(base3 / "model.safetensors"), "pt") as f:
        assert f.get_tensor("layers.0.attn.qkv_proj.weight_packed").shape == (64, 7)  # ceil(32 / 5) bytes
    assert (base3 / "model.safetensors").stat().st_size < (two_bit / "model.safetensors").stat().st_size

    a, tok = load_model_for_inference(two_bit)
    b, _ = load_model_for_inference(base3)
    assert all(m.packing == PACKING_BASE3 for m in b.modules() if isinstance(m, PackedBitLinear))
    ids = torch.tensor([tok.encode("alpha beta gamma delta")])
    with torch.no_grad():
        assert torch.equal(a(ids), b(ids))
    sizes_a, sizes_b = linear_weight_bytes(a), linear_weight_bytes(b)
    assert sizes_a["fp"] == sizes_b["fp"] and sizes_b["fp"] / sizes_b["packed"] > 8 > sizes_a["fp"] / sizes_a["packed"]
