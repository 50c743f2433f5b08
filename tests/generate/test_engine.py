import shutil
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

from lmstack.errors import ConfigError, DataError
from lmstack.generate.engine import Engine
from lmstack.generate.fast import FastDecoder, PackedLinear, quantize_int4, quantize_int8
from lmstack.generate.sampling import GenerationConfig, generate
from lmstack.models import DecoderLM, model_config

PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [3], [20, 21, 22, 23]]
CONFIGS = {
    "greedy": GenerationConfig(max_new_tokens=16),
    "sampled": GenerationConfig(max_new_tokens=16, temperature=0.9, top_k=40, top_p=0.95, seed=11),
    "penalised": GenerationConfig(max_new_tokens=16, temperature=0.7, repetition_penalty=1.5, seed=2),
}


def reference(model, prompt, cfg):
    out = generate(
        model,
        torch.tensor([prompt]),
        cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        seed=cfg.seed,
        repetition_penalty=cfg.repetition_penalty,
    )
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


needs_compiler = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("c++", "g++", "clang++")),
    reason="torch.compile's CPU backend needs a C++ compiler",
)


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


@needs_compiler
def test_refresh_keeps_the_compiled_decode_step(llama):
    compiled = Engine(llama, compile=True)
    cfg = CONFIGS["greedy"]
    before = [c.token_ids for c in compiled.generate_ids(PROMPTS[:1], cfg)]  # compiles the batch-1 step
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0
    optimizer_step(llama)
    compiled.refresh()
    got = [c.token_ids for c in compiled.generate_ids(PROMPTS[:1], cfg)]
    assert got == [c.token_ids for c in Engine(llama).generate_ids(PROMPTS[:1], cfg)] != before
    assert counters["stats"]["unique_graphs"] == graphs  # refreshed, not recompiled


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

    cfg = model_config(
        "llama-tiny",
        vocab_size=tokenizer.vocab_size,
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        d_ff=96,
        max_seq_len=128,
        bitnet=True,
    )
    bitnet = DecoderLM(cfg).eval()
    engine = Engine(bitnet, tokenizer)
    assert isinstance(engine.fast, ModelForward)
    cfg_gen = GenerationConfig(max_new_tokens=8, ignore_eos=True)
    batch = [c.token_ids for c in engine.generate_ids(PROMPTS, cfg_gen)]
    assert batch == [reference(bitnet, p, cfg_gen) for p in PROMPTS]
    with pytest.raises(ConfigError, match="nn.Linear"):
        Engine(bitnet, mode="int8")


# ----------------------------------------------------------------------------- seams for RL and prompt tuning


def optimizer_step(model, lr=1e-2):
    """One AdamW step of next-token loss on random tokens: every weight moves."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    ids = torch.randint(0, model.cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(3))
    logits = model(ids)
    F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def outputs(engine, cfg):
    return [(c.sampled_ids, c.logprobs) for c in engine.generate_ids(PROMPTS, replace(cfg, logprobs=True))]


@pytest.mark.parametrize("name", ["greedy", "sampled"])
def test_live_mode_and_refresh_follow_an_optimizer_step(model, name):
    cfg = CONFIGS[name]
    live, packed = Engine(model, mode="live"), Engine(model)
    before = outputs(packed, cfg)
    optimizer_step(model)
    fresh = outputs(Engine(model), cfg)
    assert [t for t, _ in fresh] != [t for t, _ in before]  # the step changed what gets sampled
    assert outputs(packed, cfg) != fresh  # the packed copy is stale until refreshed
    packed.refresh()
    assert outputs(packed, cfg) == fresh
    now = outputs(live, cfg)
    assert [t for t, _ in now] == [t for t, _ in fresh]
    for (_, a), (_, b) in zip(now, fresh):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5)


@pytest.mark.parametrize("mode", ["bf16", "int8", "int4"])
def test_refresh_repacks_every_mode_like_a_new_engine(llama, mode):
    cfg = CONFIGS["greedy"]
    engine = Engine(llama, mode=mode)
    optimizer_step(llama)
    fresh = outputs(Engine(llama, mode=mode), cfg)
    assert outputs(engine, cfg) != fresh
    engine.refresh()
    assert outputs(engine, cfg) == fresh


@pytest.mark.parametrize("mode", ["fp32", "live"])
@pytest.mark.parametrize("training", [True, False])
def test_the_engine_leaves_the_models_train_eval_mode_alone(model, mode, training):
    model.train(training)
    engine = Engine(model, mode=mode)
    engine.generate_ids(PROMPTS, replace(CONFIGS["sampled"], logprobs=True))
    engine.refresh()
    assert all(m.training is training for m in model.modules())


def test_packed_modes_never_apply_dropout_live_mode_follows_the_model(tokenizer):
    torch.manual_seed(0)
    cfg = model_config(
        "gpt-tiny",
        vocab_size=tokenizer.vocab_size,
        d_model=64,
        n_layers=2,
        n_heads=4,
        d_ff=96,
        max_seq_len=128,
        dropout=0.5,
    )
    model = DecoderLM(cfg).eval()
    gen = replace(CONFIGS["greedy"], logprobs=True)
    want = [c.logprobs for c in Engine(model).generate_ids(PROMPTS, gen)]
    model.train()
    assert [c.logprobs for c in Engine(model).generate_ids(PROMPTS, gen)] == want
    assert [c.logprobs for c in Engine(model, mode="live").generate_ids(PROMPTS, gen)] != want
    model.eval()
    live = [c.logprobs for c in Engine(model, mode="live").generate_ids(PROMPTS, gen)]
    assert all(torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5) for a, b in zip(live, want))


@pytest.mark.parametrize("mode", ["fp32", "live"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_logprobs_are_log_softmax_of_the_models_raw_logits(model, mode, name):
    """Rescore prompt + sampled tokens with one plain forward: the engine's log-probs are the model's, before
    temperature, top-k/top-p and repetition penalty; a row that stopped keeps its stop token and log-prob."""
    engine = Engine(model, mode=mode)
    free = engine.generate_ids(PROMPTS, CONFIGS[name])
    stop = free[1].token_ids[3]
    out = engine.generate_ids(PROMPTS, replace(CONFIGS[name], logprobs=True, stop_token_ids=[stop]))
    assert out[1].sampled_ids[-1] == stop and out[1].token_ids == out[1].sampled_ids[:-1]
    assert out[1].finish_reason == "stop"
    for prompt, c in zip(PROMPTS, out):
        assert c.sampled_ids[: len(c.token_ids)] == c.token_ids and len(c.logprobs) == len(c.sampled_ids)
        with torch.no_grad():
            logits = model(torch.tensor([prompt + c.sampled_ids]))[0, len(prompt) - 1 : -1]
        want = torch.log_softmax(logits.float(), -1)[torch.arange(len(c.sampled_ids)), c.sampled_ids]
        assert (torch.tensor(c.logprobs) - want).abs().max().item() <= 1e-5
    assert all(c.logprobs is None for c in free)


def test_decoder_takes_inputs_embeds(model):
    ids = torch.randint(0, model.cfg.vocab_size, (2, 9))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    embeds = model.embed.tokens(ids)
    with torch.no_grad():
        assert torch.equal(model(inputs_embeds=embeds), model(ids))
        assert torch.equal(model(inputs_embeds=embeds, attention_mask=mask), model(ids, mask))
    with pytest.raises(ValueError, match="exactly one"):
        model(ids, inputs_embeds=embeds)


@pytest.mark.parametrize("mode", ["fp32", "live"])
@pytest.mark.parametrize("name", ["greedy", "sampled"])
def test_embeddings_prefill_equals_token_prefill(model, mode, name):
    engine = Engine(model, mode=mode)
    cfg = replace(CONFIGS[name], logprobs=True)
    with torch.no_grad():
        embeds = [model.embed.tokens(torch.tensor(p)) for p in PROMPTS]
    by_ids, by_embeds = engine.generate_ids(PROMPTS, cfg), engine.generate_embeds(embeds, cfg)
    assert [(c.sampled_ids, c.logprobs, c.prompt_tokens) for c in by_embeds] == [
        (c.sampled_ids, c.logprobs, c.prompt_tokens) for c in by_ids
    ]


@pytest.mark.parametrize("mode", ["fp32", "live"])
def test_a_soft_prompt_prefix_steers_generation(model, mode):
    engine = Engine(model, mode=mode)
    cfg = CONFIGS["greedy"]
    prefix = torch.randn(4, model.cfg.d_model, generator=torch.Generator().manual_seed(1), requires_grad=True)
    embeds = [torch.cat([prefix, model.embed.tokens(torch.tensor(p))]) for p in PROMPTS]
    steered = [c.token_ids for c in engine.generate_embeds(embeds, cfg)]
    assert steered != [c.token_ids for c in engine.generate_ids(PROMPTS, cfg)]
    assert steered == [engine.generate_embeds([e], cfg)[0].token_ids for e in embeds]  # padding is masked
    assert prefix.grad is None


def test_bad_embedding_requests_raise(model):
    engine = Engine(model)
    with pytest.raises(DataError, match="one \\(tokens, 64\\) tensor"):
        engine.generate_embeds([torch.zeros(3, 5)])
    with pytest.raises(DataError, match="at least one"):
        engine.generate_embeds([torch.zeros(0, 64)])
    with pytest.raises(ConfigError, match="exactly one"):
        list(engine.steps(PROMPTS, GenerationConfig(), inputs_embeds=[torch.zeros(2, 64)]))
    with pytest.raises(ConfigError, match="live"):
        Engine(model, mode="live", compile=True)
