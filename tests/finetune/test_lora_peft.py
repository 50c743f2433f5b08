"""Parity with peft: the same LoRA function and gradients on a tiny HF Llama, and adapters that load both ways.

Tolerances: our base model and transformers' compute the same products (our fused q|k|v and gate|up
matmuls against HF's separate ones); here, one thread, fp32, they agree bitwise. Two fp32 evaluations of one
function in another summation order could differ by a few ulps per dot product (d=32 terms, 2 layers), far
below 1e-6 of the output's scale, which is what the tests allow. GPT-2 and BERT bases already differ from
transformers by float reassociation (measured ≤ 5e-7); there the adapter must add nothing beyond that.
"""

import copy
import json
import re

import pytest
import torch

from lmstack.errors import WeightsError
from lmstack.finetune import lora_peft
from lmstack.finetune.lora import LoRAConfig, adapter_names, apply_lora, lora_layers, lora_parameters
from lmstack.finetune.lora_peft import load_adapter, save_adapter
from lmstack.models import build_model
from lmstack.weights.hf import load_hf
from testutil import tiny_config

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# HF module (in a Llama layer) → our layer and part: written out here, apart from the code under test
LLAMA_PARTS = {
    "self_attn.q_proj": ("attn.qkv_proj", "q"),
    "self_attn.k_proj": ("attn.qkv_proj", "k"),
    "self_attn.v_proj": ("attn.qkv_proj", "v"),
    "self_attn.o_proj": ("attn.o_proj", "all"),
    "mlp.gate_proj": ("mlp.up_proj", "gate"),
    "mlp.up_proj": ("mlp.up_proj", "up"),
    "mlp.down_proj": ("mlp.down_proj", "all"),
}


def tol(ref: torch.Tensor, base_diff: float = 0.0) -> float:
    return base_diff + 1e-6 * max(1.0, ref.abs().max().item())


def hf_llama(layers: int = 2, hidden: int = 32):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=97,
        hidden_size=hidden,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def llama_pair(tmp_path_factory):
    """(transformers' tiny Llama, its directory): ours is `load_hf(directory)`."""
    hf = hf_llama()
    path = tmp_path_factory.mktemp("llama")
    hf.save_pretrained(path)
    return hf, path


def ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(seed))


def randomise(params, seed: int = 5, std: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * std)


def peft_model(hf, **kw):
    """peft's LoRA on a copy of `hf`, with random non-zero B (and A) so that every adapter matters."""
    model = peft.get_peft_model(copy.deepcopy(hf), peft.LoraConfig(**kw))
    randomise([p for n, p in sorted(model.named_parameters()) if "lora_" in n])
    return model


def our_name(peft_name: str) -> str:
    layer, module, ab = re.fullmatch(
        r"base_model\.model\.model\.layers\.(\d+)\.(.+)\.lora_([AB])\.default\.weight", peft_name
    ).groups()
    ours, part = LLAMA_PARTS[module]
    return f"layers.{layer}.{ours}.lora.default.{part}.{ab}"


@pytest.mark.parametrize(
    "options",
    [
        dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        dict(
            r=4,
            lora_alpha=8,
            target_modules=ALL,
            use_rslora=True,
            rank_pattern={"o_proj": 2, "layers.1.mlp.up_proj": 3},
            alpha_pattern={"gate_proj": 5},
        ),
    ],
    ids=["q_v", "all_rslora_patterns"],
)
def test_same_outputs_and_adapter_gradients_as_peft(llama_pair, tmp_path, options):
    hf, path = llama_pair
    ours, _ = load_hf(path)
    theirs = peft_model(hf, **options)
    theirs.save_pretrained(tmp_path)
    load_adapter(ours, tmp_path, trainable=True)  # identical A and B, through the peft files
    x = ids()
    ref, out = theirs(x).logits, ours(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=tol(ref))
    weight = torch.randn(ref.shape, generator=torch.Generator().manual_seed(7))
    (ref * weight).sum().backward()
    (out * weight).sum().backward()
    params = dict(ours.named_parameters())
    grads = {our_name(n): p.grad for n, p in theirs.named_parameters() if "lora_" in n}
    assert set(grads) == {n for n, p in params.items() if p.requires_grad}
    for name, g in grads.items():
        assert params[name].shape == g.shape
        torch.testing.assert_close(params[name].grad, g, rtol=0, atol=tol(g), msg=name)
    assert all(p.grad is None for n, p in params.items() if n not in grads)


@pytest.mark.parametrize("targets", [("q", "v", "o_proj", "gate", "up", "down_proj"), ("qkv_proj",)])
def test_an_adapter_we_save_loads_in_peft_with_the_same_outputs(llama_pair, tmp_path, targets):
    hf, path = llama_pair
    ours, _ = load_hf(path)
    apply_lora(ours, LoRAConfig(r=4, alpha=12, targets=targets, rank_pattern={"o_proj": 2}))
    randomise(lora_parameters(ours))
    save_adapter(ours, tmp_path / "adapter", base_name="tiny-llama")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny-llama" and config["peft_type"] == "LORA"
    expected = (
        ["down_proj", "gate_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
        if len(targets) > 1
        else ["k_proj", "q_proj", "v_proj"]
    )
    assert config["target_modules"] == expected
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(hf), tmp_path / "adapter")
    x = ids(2)
    with torch.no_grad():
        out = ours(x)
        torch.testing.assert_close(theirs(x).logits, out, rtol=0, atol=tol(out))
    # and back: a whole fused q|k|v adapter comes back as three part adapters sharing A, same function
    again, _ = load_hf(path)
    load_adapter(again, tmp_path / "adapter", base_name="tiny-llama")
    with torch.no_grad():
        torch.testing.assert_close(again(x), out, rtol=0, atol=tol(out))
    assert not any(p.requires_grad for p in again.parameters())  # loaded for inference unless trainable=True


def test_adapters_for_another_base_are_refused_with_the_key(llama_pair, tmp_path):
    hf, path = llama_pair
    ours, _ = load_hf(path)
    wider = peft_model(hf_llama(hidden=48), r=4, target_modules=["q_proj"])
    wider.save_pretrained(tmp_path / "wider")
    with pytest.raises(WeightsError, match=r"layers\.0\.self_attn\.q_proj\.lora_A/B have shapes \(4, 48\)"):
        load_adapter(ours, tmp_path / "wider")
    deeper = peft_model(hf_llama(layers=3), r=4, target_modules=["v_proj"])
    deeper.save_pretrained(tmp_path / "deeper")
    with pytest.raises(WeightsError, match=r"'base_model\.model\.model\.layers\.2\.self_attn\.v_proj\.lora_A\.weight'"):
        load_adapter(ours, tmp_path / "deeper")
    peft_model(hf, r=4, target_modules=["q_proj"]).save_pretrained(tmp_path / "named")
    config_file = tmp_path / "named" / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "base_model_name_or_path": "org/a"}))
    with pytest.raises(WeightsError, match="adapter for 'org/a', not for 'org/b'"):
        load_adapter(ours, tmp_path / "named", base_name="org/b")
    peft_model(hf, r=4, target_modules=["q_proj"], use_dora=True).save_pretrained(tmp_path / "dora")
    with pytest.raises(WeightsError, match="use_dora"):
        load_adapter(ours, tmp_path / "dora")
    torch.manual_seed(0)
    bitnet = build_model(tiny_config("llama-tiny", bitnet=True))
    apply_lora(bitnet, LoRAConfig(targets=("q",)))
    save_adapter(bitnet, tmp_path / "bitnet")  # BitNet bases keep lmstack's names: they are not HF Llamas
    with pytest.raises(WeightsError, match=r"attn\.qkv_proj\.q\.lora_A\.weight' names no layer"):
        load_adapter(ours, tmp_path / "bitnet")
    assert not lora_layers(ours) and adapter_names(ours) == []  # every refusal left the model as it was


def test_gpt2_fused_c_attn_both_ways(tmp_path):
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0
    )
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.save_pretrained(tmp_path / "base")
    ours, _ = load_hf(tmp_path / "base")
    x = ids(3)
    with torch.no_grad():
        base_diff = (hf(x).logits - ours(x)).abs().max().item()
    # part adapters on q, k, v: HF keeps c_attn fused, so they are written as one adapter of rank 3r
    apply_lora(ours, LoRAConfig(r=2, alpha=4, targets="all-linear"))
    randomise(lora_parameters(ours))
    save_adapter(ours, tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] and config["target_modules"] == ["c_attn", "c_fc", "c_proj"]
    assert set(config["rank_pattern"].values()) == {6}
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(hf), tmp_path / "ours")
    with torch.no_grad():
        out = ours(x)
        torch.testing.assert_close(theirs(x).logits, out, rtol=0, atol=tol(out, base_diff))
    peft_model(hf, r=4, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True).save_pretrained(tmp_path / "peft")
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(hf), tmp_path / "peft")
    again, _ = load_hf(tmp_path / "base")
    assert load_adapter(again, tmp_path / "peft") == [
        f"layers.{i}.{n}" for i in range(2) for n in ("attn.qkv_proj", "mlp.up_proj")
    ]
    with torch.no_grad():
        ref = theirs(x).logits
        torch.testing.assert_close(again(x), ref, rtol=0, atol=tol(ref, base_diff))


def test_bert_query_value_parts_both_ways(tmp_path):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=97,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0,
        attention_probs_dropout_prob=0,
    )
    hf = transformers.BertModel(config).eval()
    hf.save_pretrained(tmp_path / "base")
    ours, _ = load_hf(tmp_path / "base")
    x = ids(4)
    with torch.no_grad():
        base_diff = (hf(x).last_hidden_state - ours(x)).abs().max().item()
    theirs = peft_model(hf, r=4, target_modules=["query", "value", "intermediate.dense"])
    theirs.save_pretrained(tmp_path / "peft")
    load_adapter(ours, tmp_path / "peft")
    with torch.no_grad():
        ref = theirs(x).last_hidden_state
        torch.testing.assert_close(ours(x), ref, rtol=0, atol=tol(ref, base_diff))
    save_adapter(ours, tmp_path / "ours")
    back = peft.PeftModel.from_pretrained(copy.deepcopy(hf), tmp_path / "ours")
    with torch.no_grad():
        torch.testing.assert_close(back(x).last_hidden_state, ref, rtol=0, atol=tol(ref, base_diff))
    # a pooler adapter has nowhere to go in our encoder (it has no pooler): refused, not dropped
    peft_model(hf, r=4, target_modules=["dense"]).save_pretrained(tmp_path / "pooler")
    with pytest.raises(WeightsError, match=r"pooler\.dense\.lora_A\.weight' names no layer"):
        load_adapter(build_model(ours.cfg), tmp_path / "pooler")


@pytest.mark.parametrize("preset", ["t5-tiny", "llama-tiny-bitnet"])
def test_models_without_an_hf_layout_round_trip_with_lmstack_names(tmp_path, preset):
    torch.manual_seed(0)
    cfg = tiny_config("llama-tiny", bitnet=True) if preset.endswith("bitnet") else tiny_config(preset)
    model = build_model(cfg).eval()
    fresh = copy.deepcopy(model)
    apply_lora(model, LoRAConfig(r=4, targets="all-linear", rslora=True), name="task")
    randomise(lora_parameters(model))
    save_adapter(model, tmp_path / "a")
    load_adapter(fresh, tmp_path / "a", name="task")
    args = (ids(), ids(2)[:, :4]) if cfg.family == "seq2seq" else (ids(),)
    with torch.no_grad():
        assert torch.equal(fresh(*args), model(*args))


def test_save_is_atomic(llama_pair, tmp_path, monkeypatch):
    _, path = llama_pair
    ours, _ = load_hf(path)
    apply_lora(ours, LoRAConfig(targets=("q",)))
    target = save_adapter(ours, tmp_path / "adapter")
    before = (target / "adapter_model.safetensors").read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    randomise(lora_parameters(ours))
    monkeypatch.setattr(lora_peft, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(ours, target)
    assert (target / "adapter_model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temporary directory left behind
