"""Prompt tuning: what trains, where the virtual tokens sit (padding, packing, positions), initialisation,
a real learning run through the training loop, generation through the engine against a full-recompute
reference, save/load (also against peft), and the errors."""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from lmstack.errors import CheckpointError, ConfigError, DataError
from lmstack.finetune.prompt_tuning import (
    CONFIG_FILE,
    KEY,
    WEIGHTS_FILE,
    PromptTuned,
    PromptTuningConfig,
    generate_with_prompt,
    initial_prompt,
    is_prompt_key,
    load_prompt,
    prompt_parameters,
    save_prompt,
    soft_prompt_layout,
)
from lmstack.generate.engine import Engine
from lmstack.generate.sampling import GenerationConfig, apply_repetition_penalty
from lmstack.models import DecoderLM
from lmstack.tokenizer import Tokenizer
from lmstack.train.loop import TrainConfig, TrainingJob, train
from lmstack.train.objectives import causal_lm_loss
from testutil import tiny_config

PRESETS = ["llama-tiny", "gpt-tiny"]  # RoPE and learned positions: both must see the shifted positions


def sharp_base(preset: str = "llama-tiny", seed: int = 0, scale: float = 8.0, **overrides) -> DecoderLM:
    """A tiny random decoder with large weights: confident predictions (greedy has clear winners) and a
    model that a soft prompt can steer, as it steers a pretrained one."""
    torch.manual_seed(seed)
    model = DecoderLM(tiny_config(preset, **overrides)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("norm.weight"):
                p.mul_(scale)
    return model


def tuned(base: DecoderLM, n: int = 5, seed: int = 1) -> PromptTuned:
    return PromptTuned(base, PromptTuningConfig(n_tokens=n, seed=seed)).eval()


def concat_reference(model: PromptTuned, ids: torch.Tensor) -> torch.Tensor:
    """Logits of one unpadded row (T,) by hand: the base over [prompt; token embeddings], virtual part cut."""
    x = torch.cat([model.prompt_embeddings, model.base.embed.tokens(ids)])[None]
    return model.base(inputs_embeds=x)[0, model.n_tokens :]


# ----------------------------------------------------------------------------- what trains


def test_only_the_prompt_requires_and_gets_gradients():
    model = tuned(sharp_base(), n=4)
    named = dict(model.named_parameters())
    assert [n for n, p in named.items() if p.requires_grad] == [KEY]
    assert prompt_parameters(model) == [model.prompt_embeddings]
    ids = torch.randint(0, 97, (2, 7))
    causal_lm_loss(model, {"input_ids": ids, "labels": ids.roll(-1, 1)}).backward()
    assert model.prompt_embeddings.grad is not None and model.prompt_embeddings.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in named.items() if n != KEY)
    # the state filter keeps the prompt alone, under the names wrappers give it too
    assert [k for k in model.state_dict() if is_prompt_key(k)] == [KEY]
    assert is_prompt_key("_orig_mod.prompt_embeddings") and not is_prompt_key("base.embed.tokens.weight")


# ----------------------------------------------------------------------------- layout


@pytest.mark.parametrize("preset", PRESETS)
def test_forward_is_the_base_over_the_concatenated_embeddings(preset):
    model = tuned(sharp_base(preset))
    ids = torch.randint(0, 97, (3, 9))
    with torch.no_grad():
        logits = model(ids)
        assert logits.shape == (3, 9, 97)
        for row in range(3):
            assert torch.allclose(logits[row], concat_reference(model, ids[row]), atol=1e-5, rtol=0)
        # the prompt matters: the base alone predicts differently
        assert (logits - model.base(ids)).abs().max() > 1.0


@pytest.mark.parametrize("preset", PRESETS)
def test_left_and_right_padded_rows_equal_each_row_alone(preset):
    model = tuned(sharp_base(preset))
    ids = torch.randint(3, 97, (3, 8))
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[0, :3] = 0  # left-padded: 5 tokens
    mask[1, 6:] = 0  # right-padded: 6 tokens
    with torch.no_grad():
        logits = model(ids, mask)
        assert torch.allclose(logits[0, 3:], concat_reference(model, ids[0, 3:]), atol=1e-5, rtol=0)
        assert torch.allclose(logits[1, :6], concat_reference(model, ids[1, :6]), atol=1e-5, rtol=0)
        assert torch.allclose(logits[2], concat_reference(model, ids[2]), atol=1e-5, rtol=0)
        # given positions (counting real tokens) are shifted by n just like the default ones
        given = (mask.cumsum(1) - 1).clamp(min=0)
        assert torch.allclose(model(ids, mask, positions=given), logits, atol=1e-6, rtol=0)


def test_layout_puts_the_prompt_before_the_first_real_token_at_positions_0_to_n():
    ids = torch.arange(1, 9).view(2, 4)
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0]])
    layout = soft_prompt_layout(ids, 2, mask)
    b_t = 8  # source rows 8, 9 are the two virtual tokens
    assert layout.source.tolist() == [[0, 1, b_t, b_t + 1, 2, 3], [b_t, b_t + 1, 4, 5, 6, 7]]
    assert layout.attention_mask.long().tolist() == [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]]
    assert layout.positions[0, 2:].tolist() == [0, 1, 2, 3] and layout.positions[1, :5].tolist() == [0, 1, 2, 3, 4]
    assert layout.token_slots.tolist() == [[0, 1, 4, 5], [2, 3, 4, 5]]


@pytest.mark.parametrize("preset", PRESETS)
def test_packed_samples_each_get_their_own_prompt(preset):
    model = tuned(sharp_base(preset), n=3)
    ids = torch.randint(3, 97, (2, 10))
    seg = torch.tensor([[1, 1, 1, 1, 2, 2, 2, 3, 3, 0], [1, 1, 1, 1, 1, 1, 2, 2, 0, 0]])
    batch = {"input_ids": ids, "attention_mask": (seg > 0).long(), "segment_ids": seg}
    with torch.no_grad():
        logits = model(**batch)
        for row, spans in [(0, [(0, 4), (4, 7), (7, 9)]), (1, [(0, 6), (6, 8)])]:
            for a, b in spans:
                alone = concat_reference(model, ids[row, a:b])
                assert torch.allclose(logits[row, a:b], alone, atol=1e-5, rtol=0), (row, a, b)
        # explicit per-sample positions (what packed instruction batches carry) give the same
        positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5, 0, 1, 0, 0]])
        real = seg > 0  # padding's outputs are not compared: its positions may differ
        assert torch.allclose(model(**batch, positions=positions)[real], logits[real], atol=1e-6, rtol=0)


def test_loss_uses_the_original_labels():
    model = tuned(sharp_base())
    ids = torch.randint(3, 97, (2, 6))
    labels = ids.roll(-1, 1)
    labels[:, -1] = -100
    with torch.no_grad():
        loss = causal_lm_loss(model, {"input_ids": ids, "labels": labels})
        rows = [concat_reference(model, ids[r])[:-1] for r in range(2)]
        ref = F.cross_entropy(torch.cat(rows), labels[:, :-1].reshape(-1))
    assert torch.allclose(loss, ref, atol=1e-5)


# ----------------------------------------------------------------------------- initialisation


def test_random_init_has_the_embedding_tables_scale_and_its_seed():
    base = sharp_base()
    table = base.embed.tokens.weight
    prompt = initial_prompt(table, PromptTuningConfig(n_tokens=60, seed=3))
    assert prompt.shape == (60, 32) and prompt.dtype == torch.float32
    assert abs(prompt.std().item() / table.std().item() - 1) < 0.1 and abs(prompt.mean().item()) < 0.1 * table.std()
    assert torch.equal(prompt, initial_prompt(table, PromptTuningConfig(n_tokens=60, seed=3)))
    assert not torch.equal(prompt, initial_prompt(table, PromptTuningConfig(n_tokens=60, seed=4)))


def _row_ids(prompt: torch.Tensor, table: torch.Tensor) -> list[int]:
    """Which table row each prompt row is (each must be exactly one)."""
    hits = (prompt[:, None, :] == table[None]).all(-1)
    assert (hits.sum(1) >= 1).all()
    return hits.float().argmax(1).tolist()


def test_sample_vocab_init_draws_distinct_rows_never_special_ones():
    base = sharp_base()
    table = base.embed.tokens.weight.detach()
    banned = tuple(range(0, 90))  # leaves 7 ids
    cfg = PromptTuningConfig(n_tokens=7, init="sample_vocab", exclude_ids=banned, seed=5)
    ids = _row_ids(initial_prompt(table, cfg), table)
    assert sorted(ids) == list(range(90, 97))  # distinct, all allowed ones
    more = _row_ids(initial_prompt(table, PromptTuningConfig(12, "sample_vocab", exclude_ids=banned)), table)
    assert set(more) <= set(range(90, 97))  # with replacement once the pool is smaller than n
    full = PromptTuningConfig(n_tokens=20, init="sample_vocab", seed=5)
    assert len(set(_row_ids(initial_prompt(table, full), table))) == 20
    assert torch.equal(initial_prompt(table, full), initial_prompt(table, full))
    with pytest.raises(ConfigError, match="no token"):
        initial_prompt(table, PromptTuningConfig(2, "sample_vocab", exclude_ids=tuple(range(97))))


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    texts = ["classify the sentiment of this review: positive or negative", "the quick brown fox jumps"]
    return Tokenizer.train_bpe(texts * 20, vocab_size=300, min_frequency=1)


def test_text_init_repeats_or_cuts_the_texts_embeddings(tokenizer):
    base = sharp_base(vocab_size=tokenizer.vocab_size)
    table = base.embed.tokens.weight.detach()
    text = "the quick fox"
    ids = tokenizer.encode(text)
    n = 2 * len(ids) + 1  # two copies and a bit
    assert 1 < len(ids) and n < 64
    long = initial_prompt(table, PromptTuningConfig(n_tokens=n, init="text", init_text=text), tokenizer)
    assert torch.equal(long, table[(ids * 3)[:n]])
    short = PromptTuned(base, PromptTuningConfig(n_tokens=1, init="text", init_text=text), tokenizer)
    assert torch.equal(short.prompt_embeddings.detach(), table[ids[:1]])
    with pytest.raises(ConfigError, match="tokenizer"):
        initial_prompt(table, PromptTuningConfig(n_tokens=3, init="text", init_text=text))


def test_sample_vocab_excludes_the_tokenizers_special_tokens(tokenizer):
    base = sharp_base(vocab_size=tokenizer.vocab_size)
    table = base.embed.tokens.weight.detach()
    cfg = PromptTuningConfig(n_tokens=40, init="sample_vocab", seed=2)
    ids = _row_ids(initial_prompt(table, cfg, tokenizer), table)
    assert tokenizer.special_ids() and not set(ids) & tokenizer.special_ids()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_tokens=0), "n_tokens"),
        (dict(n_tokens=True), "n_tokens"),
        (dict(init="vocab"), "init must be one of"),
        (dict(init="text"), "init_text"),
        (dict(init_text="hello"), "only with init=text"),
    ],
)
def test_bad_configs_fail_fast(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PromptTuningConfig(**kwargs)


# ----------------------------------------------------------------------------- learning


def steering_job(model: PromptTuned, target: int = 7) -> TrainingJob:
    """Random inputs, one target token everywhere: only a prompt that steers every position solves it."""

    def batch(step: int, rows: range | None = None) -> dict[str, torch.Tensor]:
        ids = torch.randint(3, 97, (8, 8), generator=torch.Generator().manual_seed(1000 + step))
        ids = ids[slice(rows.start, rows.stop) if rows is not None else slice(None)]
        return {"input_ids": ids, "labels": torch.full_like(ids, target)}

    return TrainingJob(model, causal_lm_loss, batch, lambda: [batch(-1)], state_filter=is_prompt_key)


def loop_config(steps: int, **kw) -> TrainConfig:
    return TrainConfig(
        steps=steps,
        batch_size=8,
        lr=0.05,
        warmup_steps=0,
        weight_decay=0.0,
        eval_every=0,
        eval_batches=1,
        log_every=10,
        progress=False,
        device="cpu",
        **kw,
    )


def test_training_the_prompt_learns_and_checkpoints_hold_only_the_prompt(tmp_path):
    base = sharp_base()
    frozen = {k: v.clone() for k, v in base.state_dict().items()}
    model = PromptTuned(base, PromptTuningConfig(n_tokens=8, init="sample_vocab"))
    summary = train(steering_job(model), loop_config(40), tmp_path / "run", log=lambda _: None)
    assert summary["val_loss"] < 0.5 * summary["initial_val_loss"], summary
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in frozen.items())  # the base never moved
    ckpt = tmp_path / "run" / "step-00000040"
    assert list(load_file(ckpt / "model.safetensors")) == [KEY]
    groups = torch.load(ckpt / "trainer_state.pt", weights_only=False)["optimizer"]["param_groups"]
    assert sum(len(g["params"]) for g in groups) == 1  # the optimizer saw the prompt alone


def test_resume_restores_the_prompt_exactly(tmp_path):
    def fresh() -> PromptTuned:
        return PromptTuned(sharp_base(), PromptTuningConfig(n_tokens=4, seed=9))

    cfg = loop_config(6, save_every=3, keep_checkpoints=0)
    straight = fresh()
    train(steering_job(straight), cfg, tmp_path, log=lambda _: None)
    shutil.rmtree(tmp_path / "step-00000006")  # as if the run had stopped after step 3
    again = fresh()
    summary = train(steering_job(again), cfg, tmp_path, log=lambda _: None)
    assert summary["checkpoint"].endswith("step-00000006")
    assert torch.equal(again.prompt_embeddings, straight.prompt_embeddings)
    assert not torch.equal(again.prompt_embeddings, fresh().prompt_embeddings)


# ----------------------------------------------------------------------------- generation

PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [3], [20, 21, 22, 23]]  # left-padded together in the engine


def full_recompute(model: PromptTuned, ids: list[int], steps: int, penalty: float = 1.0) -> list[int]:
    """Greedy decoding without a cache: every step runs the base over [prompt; all token embeddings]."""
    out, table = [], model.base.embed.tokens.weight
    seen = torch.zeros(1, table.shape[0], dtype=torch.bool)
    seen[0, ids] = True
    with torch.no_grad():
        for _ in range(steps):
            x = torch.cat([model.prompt_embeddings, table[torch.tensor(ids + out)]])[None]
            logits = apply_repetition_penalty(model.base(inputs_embeds=x)[:, -1], seen, penalty)
            out.append(int(logits.argmax(-1)))
            seen[0, out[-1]] = True
    return out


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("mode", ["fp32", "live"])
def test_engine_generation_equals_the_full_recompute_reference(preset, mode):
    model = tuned(sharp_base(preset))
    engine = Engine(model.base, mode=mode)
    cfg = GenerationConfig(max_new_tokens=10, ignore_eos=True)
    batch = [c.token_ids for c in generate_with_prompt(engine, model, PROMPTS, cfg)]
    assert batch == [full_recompute(model, p, 10) for p in PROMPTS]
    assert batch != [c.token_ids for c in engine.generate_ids(PROMPTS, cfg)]  # the prompt steers
    # the training forward agrees: greedy over `model(ids)` recomputed from scratch
    with torch.no_grad():
        ids = list(PROMPTS[0])
        for _ in range(10):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert ids[len(PROMPTS[0]) :] == batch[0]


def test_sampling_and_the_repetition_penalty_behind_a_prompt():
    model = tuned(sharp_base())
    engine = Engine(model.base)
    sampled = GenerationConfig(max_new_tokens=8, temperature=0.8, seed=3, ignore_eos=True)
    batch = [c.token_ids for c in generate_with_prompt(engine, model, PROMPTS, sampled)]
    assert batch == [generate_with_prompt(engine, model, [p], sampled)[0].token_ids for p in PROMPTS]
    # prompts of the token each row would say next: only counting the prompt ids as seen keeps it from
    # being repeated (generate_embeds, which has no ids, repeats it in some row)
    greedy = GenerationConfig(max_new_tokens=1, ignore_eos=True)
    prompts = [c.token_ids for c in generate_with_prompt(engine, model, PROMPTS, greedy)]
    penalised = GenerationConfig(max_new_tokens=8, repetition_penalty=3.0, ignore_eos=True)
    out = [c.token_ids for c in generate_with_prompt(engine, model, prompts, penalised)]
    assert out == [full_recompute(model, p, 8, penalty=3.0) for p in prompts]
    with torch.no_grad():
        embeds = [torch.cat([model.prompt_embeddings, model.base.embed.tokens(torch.tensor(p))]) for p in prompts]
    assert out != [c.token_ids for c in engine.generate_embeds(embeds, penalised)]


def test_text_prompts_and_a_mismatched_engine(tokenizer):
    model = tuned(sharp_base(vocab_size=tokenizer.vocab_size))
    engine = Engine(model.base, tokenizer)
    cfg = GenerationConfig(max_new_tokens=5, ignore_eos=True)
    texts = ["the quick brown", "review: positive"]
    by_text = generate_with_prompt(engine, model, texts, cfg)
    by_ids = generate_with_prompt(engine, model, [tokenizer.encode(t) for t in texts], cfg)
    assert [c.token_ids for c in by_text] == [c.token_ids for c in by_ids]
    assert by_text[0].text == tokenizer.decode(by_text[0].token_ids)
    with pytest.raises(ConfigError, match="base"):
        generate_with_prompt(Engine(sharp_base(vocab_size=tokenizer.vocab_size)), model, texts, cfg)


def test_context_overflow_is_a_clear_error():
    base = sharp_base()  # max_seq_len 64
    model = tuned(base, n=10)
    with pytest.raises(ConfigError, match="10 virtual tokens.*max_seq_len of 64"):
        model(torch.randint(0, 97, (1, 55)))
    assert model(torch.randint(0, 97, (1, 54))).shape == (1, 54, 97)
    seg = torch.ones(1, 50, dtype=torch.long)
    seg[0, 25:] = 2
    with pytest.raises(ConfigError, match="each sample gets its own"):
        model(torch.randint(0, 97, (1, 50)), segment_ids=seg)
    with pytest.raises(ConfigError, match="10 virtual tokens.*context of 64"):
        generate_with_prompt(Engine(base), model, [[1] * 50], GenerationConfig(max_new_tokens=5))
    with pytest.raises(ConfigError, match="no room"):
        PromptTuned(base, PromptTuningConfig(n_tokens=64))


# ----------------------------------------------------------------------------- save and load


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    base = sharp_base()
    cfg = PromptTuningConfig(n_tokens=6, init="sample_vocab", exclude_ids=(0, 1, 2), seed=4)
    model = PromptTuned(base, cfg)
    with torch.no_grad():
        model.prompt_embeddings.add_(torch.randn(6, 32))  # as if trained
    path = save_prompt(model, tmp_path / "prompt", base_name="tiny-llama")
    assert sorted(p.name for p in path.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    saved = json.loads((path / CONFIG_FILE).read_text())
    assert (saved["peft_type"], saved["num_virtual_tokens"], saved["token_dim"]) == ("PROMPT_TUNING", 6, 32)
    assert saved["prompt_tuning_init"] == "SAMPLE_VOCAB" and saved["base_model_name_or_path"] == "tiny-llama"
    with safe_open(str(path / WEIGHTS_FILE), framework="pt") as f:
        assert json.loads(f.metadata()["lmstack.base"])["vocab_size"] == 97

    loaded = load_prompt(sharp_base(), path, base_name="tiny-llama")  # a fresh copy of the same base
    assert loaded.prompt_config == cfg and not loaded.prompt_embeddings.requires_grad
    assert load_prompt(base, path, trainable=True).prompt_embeddings.requires_grad
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    gen = GenerationConfig(max_new_tokens=6, ignore_eos=True)
    assert [c.token_ids for c in generate_with_prompt(Engine(loaded.base), loaded, PROMPTS, gen)] == [
        c.token_ids for c in generate_with_prompt(Engine(base), model, PROMPTS, gen)
    ]


def test_saving_is_atomic(tmp_path, monkeypatch):
    import lmstack.finetune.prompt_tuning as pt_module

    model = tuned(sharp_base())
    path = save_prompt(model, tmp_path / "prompt")
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pt_module, "write_json", broken)
    with torch.no_grad():
        model.prompt_embeddings.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        save_prompt(model, path)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["prompt"]  # no temp directory left behind


def test_loading_onto_another_base_names_the_mismatch(tmp_path):
    path = save_prompt(tuned(sharp_base()), tmp_path / "prompt", base_name="tiny-llama")
    with pytest.raises(CheckpointError, match=r"d_model 32 \(this base: 64\)"):
        load_prompt(sharp_base(d_model=64), path)
    with pytest.raises(CheckpointError, match=r"vocab_size 97 \(this base: 120\)"):
        load_prompt(sharp_base(vocab_size=120), path)
    with pytest.raises(CheckpointError, match=r"n_layers 2 \(this base: 3\)"):
        load_prompt(sharp_base(n_layers=3), path)
    with pytest.raises(CheckpointError, match="for 'tiny-llama', not for 'other'"):
        load_prompt(sharp_base(), path, base_name="other")
    with pytest.raises(CheckpointError, match="no adapter_config.json"):
        load_prompt(sharp_base(), tmp_path)
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / CONFIG_FILE).write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(CheckpointError, match="'LORA' adapter"):
        load_prompt(sharp_base(), tmp_path / "lora")
    (path / WEIGHTS_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_prompt(sharp_base(), path)


# ----------------------------------------------------------------------------- peft parity


@pytest.mark.parametrize("preset", PRESETS)
def test_peft_loads_our_prompt_and_we_load_peft_s(tmp_path, preset):
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    from lmstack.weights.hf import save_hf

    base = sharp_base(preset, scale=2.0)
    model = tuned(base, n=4)
    save_hf(base, tmp_path / "hf")
    save_prompt(model, tmp_path / "ours", base_name=str(tmp_path / "hf"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(3, 97, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # right padding: HF counts positions the same way for the real tokens
    with torch.no_grad():
        ours = model(ids, mask)
        theirs = peft.PeftModel.from_pretrained(hf, tmp_path / "ours").eval()(input_ids=ids, attention_mask=mask)
        theirs = theirs.logits[:, 4:]
        assert (ours[0] - theirs[0]).abs().max() <= 1e-4
        assert (ours[1, :6] - theirs[1, :6]).abs().max() <= 1e-4

        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
        peft_cfg = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
        peft_model = peft.get_peft_model(hf, peft_cfg)
        peft_model.prompt_encoder["default"].embedding.weight.normal_(0.0, 0.5)
        peft_model.save_pretrained(tmp_path / "theirs")
        reference = peft_model.eval()(input_ids=ids).logits[:, 3:]
        loaded = load_prompt(base, tmp_path / "theirs")
        assert loaded.n_tokens == 3 and loaded.prompt_config.init == "random"
        assert (loaded(ids) - reference).abs().max() <= 1e-4


def test_engine_prefix_embeds_checks_its_inputs():
    engine = Engine(sharp_base())
    prefix = torch.zeros(3, 32)
    with pytest.raises(ConfigError, match="token-id prompts"):
        list(engine.steps(None, GenerationConfig(), inputs_embeds=[torch.zeros(2, 32)], prefix_embeds=prefix))
    with pytest.raises(DataError, match=r"\(n_tokens, 32\)"):
        engine.generate_ids(PROMPTS, GenerationConfig(max_new_tokens=2), prefix_embeds=torch.zeros(3, 16))
    with pytest.raises(DataError, match="token ids must be in"):
        engine.generate_ids([[97]], GenerationConfig(max_new_tokens=2), prefix_embeds=prefix)
    # an empty prompt is fine behind a prefix: the prefix alone starts the generation
    out = engine.generate_ids([[]], GenerationConfig(max_new_tokens=3, ignore_eos=True), prefix_embeds=prefix)
    assert len(out[0].token_ids) == 3 and out[0].prompt_tokens == 3
