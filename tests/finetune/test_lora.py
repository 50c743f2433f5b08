"""LoRA on lmstack's own models: targeting, init, scaling, freezing, merging, several adapters, state filter."""

import copy
import math
import pickle

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from lmstack.config import from_dict
from lmstack.errors import ConfigError
from lmstack.finetune.lora import (
    LoRAConfig,
    LoRALayer,
    active_adapters,
    adapter_names,
    apply_lora,
    delete_adapter,
    disable_adapters,
    is_lora_key,
    lora_layers,
    lora_parameters,
    lora_state_dict,
    lora_summary,
    merge_lora,
    set_adapter,
    unload_lora,
    unmerge_lora,
)
from lmstack.generate.fast import FastDecoder
from lmstack.models import build_model
from lmstack.models.bitnet import BitLinear, set_quant_strength
from lmstack.models.fused import FusedLinear
from lmstack.train.loop import TrainConfig, train
from testutil import tiny_config, toy_lm_job

FP32_EPS = torch.finfo(torch.float32).eps


def llama():
    torch.manual_seed(0)
    return build_model(tiny_config("llama-tiny")).eval()


def ids(seed: int = 1, shape=(2, 9)) -> torch.Tensor:
    return torch.randint(0, 97, shape, generator=torch.Generator().manual_seed(seed))


def randomise(params, seed: int = 2, std: float = 0.05) -> None:
    """Non-zero B (and new A) of a realistic size, so that adapters change the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * std)


def logit_tol(ref: torch.Tensor) -> float:
    """Two fp32 evaluations of the same function in a different summation order (merged W + ΔW vs W and
    ΔW apart) differ by a few ulps per dot product, growing with depth: 1e-6 of the logits' scale bounds it
    for these 2-layer, d=32 models with room to spare (measured ≈ 1e-7)."""
    return 1e-6 * max(1.0, ref.abs().max().item())


# ----------------------------------------------------------------------------- config and targets


def test_config_validates_and_builds_from_a_recipe_dict():
    for bad in (dict(r=0), dict(alpha=0), dict(dropout=1.0), dict(targets=()), dict(rank_pattern={"q": 0})):
        with pytest.raises(ConfigError):
            LoRAConfig(**bad)
    cfg = from_dict(LoRAConfig, {"r": 4, "alpha": 8, "targets": ["q", "v"], "rslora": True}, path="lora")
    assert cfg.targets == ("q", "v") and cfg.r == 4 and cfg.rslora
    assert from_dict(LoRAConfig, {"targets": "all-linear"}).targets == "all-linear"
    assert LoRAConfig(targets=["all-linear"]).targets == "all-linear"


def test_targets_by_part_name_whole_layer_regex_and_all_linear():
    assert apply_lora(llama(), LoRAConfig(targets=("q", "v"))) == [
        f"layers.{i}.attn.qkv_proj.{p}" for i in range(2) for p in "qv"
    ]
    assert apply_lora(llama(), LoRAConfig(targets=("qkv_proj", "layers.1.mlp.down_proj"))) == [
        "layers.0.attn.qkv_proj",
        "layers.1.attn.qkv_proj",
        "layers.1.mlp.down_proj",
    ]
    # a regex must match a whole name; one that matches a layer adapts the whole layer, not its parts
    assert apply_lora(llama(), LoRAConfig(targets=r"layers\.1\.mlp\..*")) == [
        "layers.1.mlp.up_proj",
        "layers.1.mlp.down_proj",
    ]
    assert apply_lora(llama(), LoRAConfig(targets=r".*\.up_proj\.gate")) == [
        f"layers.{i}.mlp.up_proj.gate" for i in range(2)
    ]

    model = llama()
    names = apply_lora(model, LoRAConfig(targets="all-linear"))
    per_layer = ["attn.qkv_proj.q", "attn.qkv_proj.k", "attn.qkv_proj.v", "attn.o_proj"]
    per_layer += ["mlp.up_proj.gate", "mlp.up_proj.up", "mlp.down_proj"]
    assert names == [f"layers.{i}.{n}" for i in range(2) for n in per_layer]  # the output head is left alone
    assert type(model.lm_head) is nn.Linear
    unit = model.layers[0].attn.qkv_proj.lora["default"]
    assert list(unit) == ["q", "k", "v"] and unit.sizes == (32, 16, 16)

    model = llama()
    cfg = LoRAConfig(targets="all-linear", exclude=("k", "layers.0.mlp.down_proj"), rank_pattern={"o_proj": 2})
    names = apply_lora(model, cfg)
    assert not any(n.endswith(".k") for n in names) and "layers.0.mlp.down_proj" not in names
    assert model.layers[1].attn.o_proj.lora["default"]["all"].r == 2
    assert model.layers[1].attn.qkv_proj.lora["default"]["q"].r == 8


def test_a_target_that_matches_nothing_fails_with_the_names_that_exist():
    model = llama()
    with pytest.raises(ConfigError, match=r"'q_prj' matches no linear layer.*qkv_proj\.q.*up_proj\.gate"):
        apply_lora(model, LoRAConfig(targets=("q", "q_prj")))
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        apply_lora(model, LoRAConfig(targets="layers.(0"))
    with pytest.raises(ConfigError, match="matches no linear layer"):
        apply_lora(model, LoRAConfig(targets=r"q"))  # a regex must match a whole name, not a suffix
    with pytest.raises(ConfigError, match="removes every target"):
        apply_lora(model, LoRAConfig(targets=("q",), exclude=("q",)))
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())  # nothing was changed


# ----------------------------------------------------------------------------- the adapter's function


def test_init_is_peft_default_and_the_adapted_model_starts_at_the_base():
    model = llama()
    x = ids()
    with torch.no_grad():
        base = model(x)
    apply_lora(model, LoRAConfig(r=8, targets="all-linear"))
    part = model.layers[0].mlp.down_proj.lora["default"]["all"]
    assert part.A.shape == (8, 64) and part.B.shape == (32, 8)
    # kaiming-uniform with a = √5 is U(-1/√fan_in, 1/√fan_in), as nn.Linear's (and peft's) default
    parts = [p for layer in lora_layers(model).values() for p in layer.lora["default"].values()]
    for fan_in in (32, 64):
        a = torch.cat([p.A.flatten() for p in parts if p.A.shape[1] == fan_in])
        bound = 1 / math.sqrt(fan_in)
        assert a.abs().max() <= bound and a.abs().max() > 0.95 * bound
        assert abs(a.std().item() - bound / math.sqrt(3)) < 0.05 * bound
    assert all(torch.count_nonzero(p) == 0 for n, p in model.named_parameters() if n.endswith(".B"))
    with torch.no_grad():
        assert torch.equal(model(x), base)  # B = 0 adds exact zeros


@pytest.mark.parametrize("rslora", [False, True])
def test_a_part_adapter_adds_s_b_a_x_to_its_rows_only(rslora):
    model = llama()
    layer = model.layers[0].attn.qkv_proj
    apply_lora(model, LoRAConfig(r=4, alpha=6.0, rslora=rslora, targets=("v",)))
    part = layer.lora["default"]["v"]
    randomise([part.A, part.B])
    x = torch.randn(3, 32)
    s = 6.0 / (math.sqrt(4) if rslora else 4)
    assert part.scaling == s
    with torch.no_grad():
        out = layer(x)
        base = x @ layer.weight.t()
    expected = base.clone()
    expected[:, 48:] += s * (x @ part.A.t()) @ part.B.t()  # v is rows 48..63 of q|k|v (32 | 16 | 16)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert torch.equal(out[:, :48], base[:, :48])


def test_only_adapter_parameters_train_and_the_base_stays_bitwise():
    model = llama().train()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, LoRAConfig(r=4, targets=("q", "v", "o_proj", "down_proj")))
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in lora_parameters(model)} and len(trainable) == 2 * 8
    assert lora_summary(model)["trainable"] == sum(p.numel() for p in lora_parameters(model))
    opt = torch.optim.AdamW(lora_parameters(model), lr=3e-2)
    data = (ids(3, (8, 1)) + 5 * torch.arange(13)) % 97  # each token determines the next
    losses = []
    for _ in range(25):
        logits = model(data[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, 97), data[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for n, p in model.named_parameters() if not is_lora_key(n))
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.15  # measured 4.58 → 4.32; frozen adapters would stay at 4.58
    assert all(torch.equal(model.state_dict()[k], v) for k, v in base.items())  # the same names, untouched


def test_dropout_applies_in_training_only():
    model = llama().train()
    apply_lora(model, LoRAConfig(targets="all-linear", dropout=0.5))
    randomise(lora_parameters(model))
    x = ids()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


# ----------------------------------------------------------------------------- merging


def test_merge_equals_unmerged_and_unmerge_restores_the_base_weights():
    model = llama()
    x = ids()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, LoRAConfig(r=4, targets="all-linear", rslora=True))
    randomise(lora_parameters(model))
    with torch.no_grad():
        adapted = model(x)
        assert merge_lora(model) == 2 * 4 and merge_lora(model) == 0  # a second merge adds nothing
        largest = {k: max(v.abs().max().item(), model.state_dict()[k].abs().max().item()) for k, v in weights.items()}
        merged = model(x)
        torch.testing.assert_close(merged, adapted, rtol=0, atol=logit_tol(adapted))
        assert unmerge_lora(model) == 8
        torch.testing.assert_close(model(x), adapted, rtol=0, atol=logit_tol(adapted))
    # (W + ΔW) - ΔW is W up to two roundings (of the sum and of the difference), each at most half an ulp,
    # and an ulp of v is at most eps·|v|: the error is below eps times the largest |W| or |W + ΔW|
    for k, w in weights.items():
        bound = FP32_EPS * largest[k]
        err = (model.state_dict()[k] - w).abs().max().item()
        assert err <= bound and err <= 1e-6, k


def test_unload_gives_back_plain_layers_merged_or_not():
    model = llama()
    x = ids()
    with torch.no_grad():
        base = model(x)
    apply_lora(model, LoRAConfig(targets="all-linear"))
    randomise(lora_parameters(model))
    with pytest.raises(ConfigError, match="packs plain nn.Linear"):  # it would drop the adapters; engines go live
        FastDecoder(model)
    with torch.no_grad():
        adapted = model(x)
    plain = unload_lora(copy.deepcopy(model), merge=True)
    assert type(plain.layers[0].attn.qkv_proj) is FusedLinear and type(plain.layers[0].attn.o_proj) is nn.Linear
    assert not any(is_lora_key(k) for k in plain.state_dict())
    fast = FastDecoder(plain)
    cache = fast.new_cache(2, 16)
    logits = fast(x, torch.arange(9).expand(2, 9), cache, is_causal=True, last_only=False)
    torch.testing.assert_close(logits, adapted, rtol=0, atol=1e-5)  # FastDecoder's own fp32 reassociation bound
    restored = unload_lora(model)
    with torch.no_grad():
        assert torch.equal(restored(x), base)


def test_merging_into_tied_or_ternary_weights_is_refused():
    model = llama()  # the tiny llama ties lm_head to the token embeddings
    apply_lora(model, LoRAConfig(targets=("lm_head",)))
    with pytest.raises(ConfigError, match="tied"):
        merge_lora(model)
    torch.manual_seed(0)
    bitnet = build_model(tiny_config("llama-tiny", bitnet=True))
    apply_lora(bitnet, LoRAConfig(targets="all-linear"))
    with pytest.raises(ConfigError, match="ternary"):
        merge_lora(bitnet)
    assert not any(layer.lora_merged for layer in lora_layers(bitnet).values())


# ----------------------------------------------------------------------------- several adapters


def test_several_adapters_switch_combine_disable_and_delete():
    model = llama()
    x = ids()
    with torch.no_grad():
        base = model(x)
    apply_lora(model, LoRAConfig(r=4, targets=("q", "v")), name="a")
    randomise(lora_parameters(model, "a"), seed=3)
    only_a = copy.deepcopy(model)
    apply_lora(model, LoRAConfig(r=2, targets="all-linear"), name="b")
    randomise(lora_parameters(model, "b"), seed=4)
    assert adapter_names(model) == ["a", "b"] and active_adapters(model) == ("b",)
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in lora_parameters(model, "b")}
    with torch.no_grad():
        out_b = model(x)
        model_a = copy.deepcopy(model)
        delete_adapter(model_a, "b")  # deleting the active adapter leaves none active
        assert active_adapters(model_a) == () and torch.equal(model_a(x), base)
        set_adapter(model_a, "a")
        from_scratch_b = copy.deepcopy(model)
        delete_adapter(from_scratch_b, "a")
        torch.testing.assert_close(out_b, from_scratch_b(x), rtol=0, atol=0)

        set_adapter(model, "a")
        assert torch.equal(model(x), only_a(x)) and torch.equal(model_a(x), only_a(x))
        assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in lora_parameters(model, "a")}
        set_adapter(model, ["a", "b"])  # active adapters add up
        both = model(x)
        assert (both - out_b).abs().max() > 1e-3 and (both - only_a(x)).abs().max() > 1e-3
        with disable_adapters(model):
            assert torch.equal(model(x), base)  # the reference model of DPO/PPO, without a copy
        assert torch.equal(model(x), both)

        merge_lora(model)
        with pytest.raises(ConfigError, match="unmerge_lora first"):
            set_adapter(model, "a")
        with pytest.raises(ConfigError, match="unmerge_lora first"):
            with disable_adapters(model):
                pass
        unmerge_lora(model)
    with pytest.raises(ConfigError, match="no adapter named"):
        set_adapter(model, "c")
    with pytest.raises(ConfigError, match="already has an adapter named 'a'"):
        apply_lora(model, LoRAConfig(), name="a")
    delete_adapter(model, "a")
    delete_adapter(model, "b")
    assert not lora_layers(model) and type(model.layers[0].attn.qkv_proj) is FusedLinear
    with torch.no_grad():  # the base again, up to the rounding that merge + unmerge left in its weights
        torch.testing.assert_close(model(x), base, rtol=0, atol=logit_tol(base))


# ----------------------------------------------------------------------------- checkpoints


def test_is_lora_key_as_the_training_jobs_state_filter(tmp_path):
    job = toy_lm_job()
    apply_lora(job.model, LoRAConfig(r=4, targets=("q", "v", "up_proj")))
    job.state_filter = is_lora_key
    before = {k: v.clone() for k, v in job.model.state_dict().items() if not is_lora_key(k)}
    cfg = TrainConfig(steps=3, batch_size=8, lr=1e-2, warmup_steps=1, eval_every=0, log_every=1, progress=False)
    train(job, cfg, tmp_path, log=lambda m: None)
    saved = load_file(tmp_path / "step-00000003" / "model.safetensors")
    adapters = lora_state_dict(job.model)
    assert set(saved) == set(adapters) and len(saved) == 2 * 2 * 2 + 2 * 2  # q, v (2 layers) + up, A and B each
    assert all(torch.equal(saved[k], v) for k, v in adapters.items())
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in saved.items() if k.endswith(".B"))  # it trained
    assert all(torch.equal(job.model.state_dict()[k], v) for k, v in before.items())


# ----------------------------------------------------------------------------- other model families


def _trains_adapters_only(model, loss) -> None:
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is None for n, g in grads.items() if not is_lora_key(n))
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if is_lora_key(n) and n.endswith(".A"))


def test_encoder_all_linear_includes_the_mlm_transform_not_its_decoder():
    torch.manual_seed(0)
    model = build_model(tiny_config("bert-tiny")).eval()
    x = ids()
    names = apply_lora(model, LoRAConfig(targets="all-linear"))
    assert "mlm_head.dense" in names and "mlm_head.decoder" not in names
    assert "layers.0.attn.qkv_proj.q" in names and "layers.0.mlp.up_proj" in names  # BERT's MLM is not gated
    randomise(lora_parameters(model))
    with torch.no_grad():
        adapted = model.mlm_logits(model(x))
        merge_lora(model)
        torch.testing.assert_close(model.mlm_logits(model(x)), adapted, rtol=0, atol=logit_tol(adapted))
        unmerge_lora(model)
    _trains_adapters_only(model, model.mlm_logits(model(x)).pow(2).mean())


def test_seq2seq_parts_cover_self_and_cross_attention():
    torch.manual_seed(0)
    model = build_model(tiny_config("t5-tiny")).eval()
    src, tgt = ids(1), ids(2, (2, 5))
    names = apply_lora(model, LoRAConfig(targets=("q", "k", "v", "cross_attn.q_proj")))
    assert "encoder_layers.0.attn.qkv_proj.q" in names and "decoder_layers.0.attn.qkv_proj.k" in names
    assert "decoder_layers.0.cross_attn.kv_proj.k" in names and "decoder_layers.0.cross_attn.kv_proj.v" in names
    assert "decoder_layers.0.cross_attn.q_proj" in names
    randomise(lora_parameters(model))
    with torch.no_grad():
        adapted = model(src, tgt)
        merge_lora(model)
        torch.testing.assert_close(model(src, tgt), adapted, rtol=0, atol=logit_tol(adapted))
        unmerge_lora(model)
        assert model.generate(src, 3).shape == (2, 3)
    _trains_adapters_only(model, model(src, tgt).pow(2).mean())


def test_bitnet_adapters_run_in_full_precision_beside_the_ternary_base():
    torch.manual_seed(0)
    model = build_model(tiny_config("llama-tiny", bitnet=True)).eval()
    x = ids()
    with torch.no_grad():
        base = model(x)
    apply_lora(model, LoRAConfig(r=4, targets="all-linear"))
    layer = model.layers[0].attn.o_proj
    assert isinstance(layer, BitLinear) and set_quant_strength(model, 1.0) == 2 * 4
    with torch.no_grad():
        assert torch.equal(model(x), base)
    randomise(lora_parameters(model))
    h = torch.randn(3, 32)
    part = layer.lora["default"]["all"]
    with torch.no_grad():
        expected = BitLinear.forward(layer, h) + part.scaling * (h @ part.A.t()) @ part.B.t()
        torch.testing.assert_close(layer(h), expected, rtol=0, atol=1e-6)
    # gradients reach the first layer's adapters through the later ternary layers (straight through)
    _trains_adapters_only(model, model(x).pow(2).mean())


def test_adapted_model_keeps_its_state_dict_names_and_copies():
    model = llama()
    keys = set(model.state_dict())
    apply_lora(model, LoRAConfig(targets=("q", "v")))
    assert set(model.state_dict()) == keys | set(lora_state_dict(model))
    twin = copy.deepcopy(model)  # e.g. a frozen reference model for alignment
    assert isinstance(twin.layers[0].attn.qkv_proj, LoRALayer)
    twin.load_state_dict(model.state_dict())
    pickled = pickle.loads(pickle.dumps(model))  # the adapted classes live at module level
    x = ids()
    with torch.no_grad():
        assert torch.equal(pickled(x), model(x))


def test_the_engine_runs_an_adapted_model_live_with_its_adapters():
    from lmstack.generate.engine import Engine
    from lmstack.generate.sampling import GenerationConfig

    model = llama()
    apply_lora(model, LoRAConfig(targets="all-linear"))
    randomise(lora_parameters(model), std=0.3)
    engine = Engine(model)
    assert engine.mode == "live"  # FastDecoder refused the adapted layers instead of dropping the adapters
    prompts = [[5, 6, 7], [8, 9]]
    config = GenerationConfig(max_new_tokens=6)
    adapted = [c.token_ids for c in engine.generate_ids(prompts, config)]
    with disable_adapters(model):
        base = [c.token_ids for c in engine.generate_ids(prompts, config)]
    merged = unload_lora(copy.deepcopy(model), merge=True)
    assert [c.token_ids for c in Engine(merged).generate_ids(prompts, config)] == adapted  # packed fp32 mode
    assert base != adapted
