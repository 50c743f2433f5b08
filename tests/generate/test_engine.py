import shutil

import pytest
import torch
from torch._dynamo.utils import counters

from lmstack.errors import ConfigError, DataError
from lmstack.generate.engine import Engine
from lmstack.generate.fast import FastDecoder, PackedLinear, quantize_int4, quantize_int8
from lmstack.generate.sampling import GenerationConfig, generate

PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [3], [20, 21, 22, 23]]
CONFIGS = {
    "greedy": GenerationConfig(max_new_tokens=16),
    "sampled": GenerationConfig(max_new_tokens=16, temperature=0.9, top_k=40, top_p=0.95, seed=11),
    "penalised": GenerationConfig(max_new_tokens=16, temperature=0.7, repetition_penalty=1.5, seed=2),
}


def reference(model, prompt, cfg):
    out = generate(model, torch.tensor([prompt]), cfg.max_new_tokens, temperature=cfg.temperature,
                   top_k=cfg.top_k, top_p=cfg.top_p, seed=cfg.seed, repetition_penalty=cfg.repetition_penalty)
    return out[0].tolist()


def test_fast_forward_matches_model(model):
    fast = FastDecoder(model)
    ids = torch.randint(0, model.cfg.vocab_size, (2, 10))
    cache = fast.new_cache(2, 16)
    logits = fast(ids, torch.arange(10).expand(2, 10), cache, is_causal=True, last_only=False)
    with torch.no_grad():
        ref = model(ids)
    assert (logits - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()
    assert cache.length == 10


@pytest.mark.parametrize("name", list(CONFIGS))
def test_batched_equals_one_by_one_equals_reference(model, name):
    cfg = CONFIGS[name]
    engine = Engine(model)
    batch = [c.token_ids for c in engine.generate_ids(PROMPTS, cfg)]
    alone = [engine.generate_ids([p], cfg)[0].token_ids for p in PROMPTS]
    ref = [reference(model, p, cfg) for p in PROMPTS]
    assert batch == alone == ref
    assert len(set(map(tuple, batch))) == 3


def test_prefill_is_one_forward_pass(model, monkeypatch):
    engine = Engine(model)
    calls = []
    original = FastDecoder.__call__

    def counting(self, input_ids, *args, **kwargs):
        calls.append(tuple(input_ids.shape))
        return original(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(FastDecoder, "__call__", counting)
    engine.generate_ids(PROMPTS, GenerationConfig(max_new_tokens=5, ignore_eos=True))
    assert calls == [(3, 9)] + [(3, 1)] * 4


def test_stops_and_finish_reasons(model, tokenizer):
    engine = Engine(model, tokenizer)
    free = engine.generate_ids([PROMPTS[0]], GenerationConfig(max_new_tokens=12, ignore_eos=True))[0]
    assert free.finish_reason == "length" and len(free.token_ids) == 12
    stop = free.token_ids[5]
    first = free.token_ids.index(stop)
    cut = engine.generate_ids([PROMPTS[0]], GenerationConfig(max_new_tokens=12, stop_token_ids=[stop]))[0]
    assert cut.token_ids == free.token_ids[:first] and cut.finish_reason == "stop"
    # a stop string: the text ends right before it, and the tokens end with the token that completed it
    text = free.text
    needle = text[len(text) // 2 : len(text) // 2 + 2]
    assert needle.strip()
    done = engine.generate_ids([PROMPTS[0]], GenerationConfig(max_new_tokens=12, stop=[needle]))[0]
    assert done.text == text[: text.index(needle)] and done.finish_reason == "stop"
    assert needle in tokenizer.decode(done.token_ids) and needle not in tokenizer.decode(done.token_ids[:-1])


def test_eos_ends_a_row_while_others_continue(model, tokenizer):
    engine = Engine(model, tokenizer)
    free = engine.generate_ids(PROMPTS, GenerationConfig(max_new_tokens=10, ignore_eos=True))
    stop = free[1].token_ids[2]
    out = engine.generate_ids(PROMPTS, GenerationConfig(max_new_tokens=10, stop_token_ids=[stop]))
    for f, o in zip(free, out):
        expected = f.token_ids[: f.token_ids.index(stop)] if stop in f.token_ids else f.token_ids
        assert o.token_ids == expected


def test_stream_concatenates_to_the_generated_text(model, tokenizer):
    engine = Engine(model, tokenizer)
    cfg = GenerationConfig(max_new_tokens=30, temperature=1.0, seed=5, ignore_eos=True)
    pieces = list(engine.stream("héllo 🤖", cfg))
    full = engine.generate("héllo 🤖", cfg)[0]
    assert "".join(pieces) == full.text
    assert len(pieces) > 1


@pytest.mark.parametrize("mode", ["bf16", "int8", "int4"])
def test_fast_modes_stay_close_to_fp32(model, mode):
    ids = torch.randint(0, model.cfg.vocab_size, (1, 12))
    exact = FastDecoder(model)
    fast = FastDecoder(model, mode=mode)
    a = exact(ids, torch.arange(12)[None], exact.new_cache(1, 12), is_causal=True)
    b = fast(ids, torch.arange(12)[None], fast.new_cache(1, 12), is_causal=True)
    assert torch.cosine_similarity(a, b).item() > (0.9 if mode == "int4" else 0.99)  # 4 bits of random weights
    assert not torch.equal(a, b)
    assert fast.weight_bytes < exact.weight_bytes * {"bf16": 0.6, "int8": 0.35, "int4": 0.3}[mode]


needs_compiler = pytest.mark.skipif(not any(shutil.which(c) for c in ("c++", "g++", "clang++")),
                                    reason="torch.compile's CPU backend needs a C++ compiler")


def decode_logits(fast: FastDecoder, ids: torch.Tensor, steps: int) -> torch.Tensor:
    """Prefill all but the last `steps` tokens, then feed those one at a time; stack the decode logits."""
    n = ids.shape[1] - steps
    cache = fast.new_cache(1, ids.shape[1])
    fast(ids[:, :n], torch.arange(n)[None], cache, is_causal=True)
    return torch.cat([fast(ids[:, i : i + 1], torch.tensor([[i]]), cache) for i in range(n, ids.shape[1])])


@needs_compiler
def test_compiled_decode_gives_the_eager_tokens(model):
    compiled_frames = counters["frames"]["ok"]
    eager, compiled = Engine(model), Engine(model, compile=True)
    for prompts in (PROMPTS, PROMPTS[:1]):  # a padded batch (masked attention) and one row (the GEMV path)
        want = [c.token_ids for c in eager.generate_ids(prompts, CONFIGS["greedy"])]
        assert [c.token_ids for c in compiled.generate_ids(prompts, CONFIGS["greedy"])] == want
    assert counters["frames"]["ok"] > compiled_frames  # the decode steps really went through torch.compile
    ids = torch.randint(0, model.cfg.vocab_size, (1, 12))
    a, b = decode_logits(eager.fast, ids, 4), decode_logits(compiled.fast, ids, 4)
    assert (a - b).abs().max().item() <= 1e-5 * a.abs().max().item()  # only the summation order differs


@needs_compiler
@pytest.mark.parametrize("mode", ["bf16", "int8", "int4"])
def test_compiled_fast_modes_match_their_eager_mode(llama, mode):
    ids = torch.randint(0, llama.cfg.vocab_size, (1, 12))
    a = decode_logits(FastDecoder(llama, mode=mode), ids, 3)
    b = decode_logits(FastDecoder(llama, mode=mode, compile=True), ids, 3)
    # the compiled GEMV multiplies fp32 activations by the stored weights; the eager int/bf16 kernels first
    # round the activations to bf16, so the two differ by that rounding only
    assert torch.cosine_similarity(a, b).min().item() > 0.999


def test_int8_quantisation_error_is_bounded():
    w = torch.randn(64, 48)
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and q.abs().max() <= 127
    assert ((q.float() * scale[:, None]) - w).abs().max() <= scale.max() / 2 + 1e-6


def test_int4_represents_q4_1_weights_exactly():
    """Weights that are already 16 levels per group of 32 (GGUF Q4_1 dequantized) survive int4 unchanged."""
    levels = torch.randint(0, 16, (16, 64)).float()
    levels[:, ::32] = 0  # each group spans the full 0..15 range, as ggml's min/max quantizer makes it
    levels[:, 1::32] = 15
    d = torch.rand(16, 2).repeat_interleave(32, dim=1) + 0.1
    m = torch.randn(16, 2).repeat_interleave(32, dim=1)
    w = levels * d + m
    q, scale, zero = quantize_int4(w)
    back = (q.float().view(16, 2, 32) - 8) * scale[..., None] + zero[..., None]
    assert torch.allclose(back.view(16, 64), w, atol=1e-5)
    x = torch.randn(3, 64)
    y = PackedLinear(w, None, "int4")(x)
    assert torch.allclose(y, x @ w.t(), rtol=0.02, atol=0.05)  # bf16 activations


def test_bad_requests_raise(model, tokenizer):
    engine = Engine(model, tokenizer)
    with pytest.raises(DataError):
        engine.generate_ids([[]])
    with pytest.raises(DataError):
        engine.generate_ids([[model.cfg.vocab_size]])
    with pytest.raises(ConfigError, match="context"):
        engine.generate_ids([[1] * 100], GenerationConfig(max_new_tokens=100))
    with pytest.raises(ConfigError, match="tokenizer"):
        Engine(model).generate_ids([[1]], GenerationConfig(stop=["x"]))
    with pytest.raises(ConfigError, match="mode"):
        Engine(model, mode="fp8")
    with pytest.raises(ConfigError, match="divisible by 32"):
        quantize_int4(torch.randn(4, 40))
    assert engine.generate_ids([], GenerationConfig()) == []
    empty = engine.generate_ids([[1, 2]], GenerationConfig(max_new_tokens=0))[0]
    assert empty.token_ids == [] and empty.text == ""


def test_unpackable_layers_fall_back_to_the_models_forward(tokenizer):
    from lmstack.generate.fast import ModelForward
    from lmstack.models import DecoderLM, model_config

    cfg = model_config("llama-tiny", vocab_size=tokenizer.vocab_size, d_model=64, n_layers=2, n_heads=4,
                       n_kv_heads=2, d_ff=96, max_seq_len=128, bitnet=True)
    bitnet = DecoderLM(cfg).eval()
    engine = Engine(bitnet, tokenizer)
    assert isinstance(engine.fast, ModelForward)
    cfg_gen = GenerationConfig(max_new_tokens=8, ignore_eos=True)
    batch = [c.token_ids for c in engine.generate_ids(PROMPTS, cfg_gen)]
    assert batch == [reference(bitnet, p, cfg_gen) for p in PROMPTS]
    with pytest.raises(ConfigError, match="nn.Linear"):
        Engine(bitnet, mode="int8")
