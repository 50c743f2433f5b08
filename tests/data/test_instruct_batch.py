"""Instruction batches: packing without leakage, completion-only loss, seeded step → batch, mixtures."""

import json
import random
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmstack.data.instruct import IGNORE_INDEX, InstructFormat, Sample, load_instruct_jsonl
from lmstack.data.instruct_batch import (
    InstructBatches,
    Mixture,
    eval_batches,
    first_fit,
    largest_remainder,
    make_batch,
    mixture_probabilities,
)
from lmstack.data.instruct_loss import completion_loss, model_inputs, per_task_loss, sample_losses, token_losses
from lmstack.errors import ConfigError, DataError
from lmstack.models import DecoderLM
from lmstack.tokenizer import Tokenizer
from testutil import tiny_config

WORDS = "the quick brown fox jumps over the lazy dog. what is two plus two? four. be brief. a b c"
SUBJECTS = ["the fox", "the dog", "a fox", "two dogs", "the brown fox", "the lazy dog"]
VERBS = ["jumps over", "is", "plus", "sees", "be"]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train_bpe([WORDS] * 20, vocab_size=400, min_frequency=1)


def rows(n: int, seed: int) -> list[dict]:
    """Varied single- and multi-turn rows of different lengths."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ask = " ".join(rng.choice(SUBJECTS) for _ in range(rng.randint(1, 4))) + "?"
        answer = " ".join(f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)}" for _ in range(rng.randint(1, 3))) + "."
        if i % 3 == 2:
            turns = [{"role": "system", "content": "be brief."}, {"role": "user", "content": ask}]
            turns += [{"role": "assistant", "content": answer}, {"role": "user", "content": "what is two plus two?"}]
            out.append({"messages": turns + [{"role": "assistant", "content": "four."}]})
        else:
            out.append({"prompt": ask, "completion": answer})
    return out


def load(tok, tmp_path, name: str, n: int, seed: int, max_len: int = 96) -> list[Sample]:
    path = tmp_path / f"{name}.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows(n, seed)) + "\n")
    return load_instruct_jsonl(path, tok, InstructFormat(max_len=max_len))


@pytest.fixture(scope="module")
def samples(tok, tmp_path_factory) -> list[Sample]:
    return load(tok, tmp_path_factory.mktemp("instruct"), "chat", 24, seed=0)


def model_for(tok: Tokenizer, preset: str = "llama-tiny") -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(tiny_config(preset, vocab_size=tok.vocab_size, max_seq_len=256)).eval()


def alone_losses(model, batch_samples) -> torch.Tensor:
    """Each sample's mean token loss from a forward of that sample alone (no padding: SDPA's causal path)."""
    out = []
    for s in batch_samples:
        with torch.no_grad():
            logits = model(torch.from_numpy(s.ids[None, :-1]))[0]
        ce = F.cross_entropy(logits.float(), torch.from_numpy(s.ids[1:]), reduction="none")
        out.append(ce[torch.from_numpy(s.trained[1:])].double().mean())
    return torch.stack(out)


# ----------------------------------------------------------------------------- packing


def naive_first_fit(lengths, capacity):
    bins, room = [], []
    for i, n in enumerate(lengths):
        for b, r in enumerate(room):
            if r >= n:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(capacity - n)
    return bins


def test_first_fit_puts_each_item_in_the_first_bin_with_room():
    rng = random.Random(0)
    for _ in range(50):
        lengths = [rng.randint(1, 40) for _ in range(rng.randint(1, 60))]
        assert first_fit(lengths, 40) == naive_first_fit(lengths, 40)
    assert first_fit([5, 7, 3, 6, 2], 10) == [[0, 2, 4], [1], [3]]
    with pytest.raises(ValueError):
        first_fit([11], 10)


def test_make_batch_layout(samples):
    a, b = samples[0], samples[1]
    batch = make_batch([[a, b], [b]])
    n, m = len(a) - 1, len(b) - 1
    assert batch["input_ids"].shape == (2, n + m)
    assert batch["input_ids"][0].tolist() == a.ids[:-1].tolist() + b.ids[:-1].tolist()
    expected = np.where(a.trained[1:], a.ids[1:], IGNORE_INDEX).tolist()
    assert batch["labels"][0, :n].tolist() == expected  # shifted within the sample: the target of t is t + 1
    assert batch["positions"][0].tolist() == list(range(n)) + list(range(m))
    assert batch["segment_ids"][0].tolist() == [1] * n + [2] * m
    assert batch["segment_ids"][1].tolist() == [1] * m + [0] * n
    assert batch["attention_mask"][1].tolist() == [1] * m + [0] * n
    assert (batch["labels"][1, m:] == IGNORE_INDEX).all() and (batch["input_ids"][1, m:] == 0).all()
    assert "segment_ids" not in make_batch([[a], [b]])  # one sample per row: a plain padded batch


def test_packed_sample_cannot_see_its_neighbours(samples, tok):
    """A sample packed between two others: changing either neighbour leaves its logits bit for bit."""
    model = model_for(tok)
    left, mid, right = samples[0], samples[1], samples[2]
    lo, hi = len(left) - 1, len(left) + len(mid) - 2
    batch = make_batch([[left, mid, right]])
    gen = torch.Generator().manual_seed(1)
    changed = dict(batch)
    changed["input_ids"] = batch["input_ids"].clone()
    changed["input_ids"][0, :lo] = torch.randint(0, tok.vocab_size, (lo,), generator=gen)
    changed["input_ids"][0, hi:] = torch.randint(0, tok.vocab_size, (batch["input_ids"].shape[1] - hi,), generator=gen)
    with torch.no_grad():
        a = model(**model_inputs(batch))
        b = model(**model_inputs(changed))
        leaky = model(changed["input_ids"], positions=changed["positions"])  # the same row without segments
    assert torch.equal(a[0, lo:hi], b[0, lo:hi])
    assert not torch.allclose(a[0, lo:hi], leaky[0, lo:hi], atol=1e-4)


@pytest.mark.parametrize("preset", ["gpt-tiny", "llama-tiny"])
def test_packed_padded_and_alone_give_the_same_per_sample_loss(samples, tok, preset):
    """Tolerance: a token's loss moves by at most 2·max|Δlogit|. The layouts run different attention kernels
    (masked SDPA vs the causal fast path) and matmul shapes, so fp32 logits (|z| < 2 at this init) may differ
    by a couple of ulps, ≤ 2·2·2⁻²³·2 ≈ 1e-6 in the loss; per-sample means are summed in float64, adding no
    rounding of their own. Measured here: ≈1e-7. In float64 the layouts agree to 1e-12, so what is left in
    fp32 is rounding, not leakage."""
    model = model_for(tok, preset)
    group = samples[:9]
    packed_rows = [[group[i] for i in b] for b in first_fit([len(s) - 1 for s in group], 128)]
    order = [s for row in packed_rows for s in row]
    assert len(packed_rows) < len(group)  # several samples do share rows
    packed, padded = make_batch(packed_rows), make_batch([[s] for s in order])
    with torch.no_grad():
        p, q = sample_losses(model, packed), sample_losses(model, padded)
    alone = alone_losses(model, order)
    assert (p - q).abs().max() <= 1e-6 and (p - alone).abs().max() <= 1e-6
    model = model.double()
    with torch.no_grad():
        assert (sample_losses(model, packed) - sample_losses(model, padded)).abs().max() <= 1e-12


# ----------------------------------------------------------------------------- the loss


def _returns(logits):
    """A stand-in model that outputs `logits`, honouring `logits_at` as `DecoderLM.forward` does."""
    return lambda logits_at=None, **_: logits if logits_at is None else logits[logits_at]


def test_completion_loss_ignores_everything_at_prompt_positions(samples, tok):
    """Whatever the model outputs at a prompt/system/user (or padding) position cannot move the loss: its
    gradient there is exactly zero, and replacing those logits changes nothing."""
    model = model_for(tok)
    batch = make_batch([[samples[2], samples[3]], [samples[5]]])
    with torch.no_grad():
        logits = model(**model_inputs(batch))
    ignored = batch["labels"] == IGNORE_INDEX
    assert ignored.any() and (~ignored).any()
    leaf = logits.clone().requires_grad_()
    loss = completion_loss(_returns(leaf), batch)
    loss.backward()
    assert (leaf.grad[ignored] == 0).all() and (leaf.grad[~ignored].abs().sum(-1) > 0).all()
    garbage = torch.where(ignored[..., None], torch.randn_like(logits) * 50, logits)
    assert torch.equal(completion_loss(_returns(garbage), batch), loss.detach())
    unmasked = dict(
        batch, labels=torch.where(ignored & (batch["attention_mask"] > 0), batch["input_ids"], batch["labels"])
    )
    assert not torch.allclose(completion_loss(_returns(logits), unmasked), loss.detach())


def test_completion_loss_runs_the_head_on_trained_positions_only(samples, tok):
    """`logits_at` (the head on the trained positions only) gives the loss and gradients of scoring the full
    (B, T, vocab) logits, in float64 to within rounding."""
    model = model_for(tok).double()
    batch = make_batch([[samples[2], samples[3]], [samples[5]]])
    keep = batch["labels"] != IGNORE_INDEX
    assert model(**model_inputs(batch), logits_at=keep).shape == (int(keep.sum()), model.cfg.vocab_size)
    fast = completion_loss(model, batch)
    fast.backward()
    fast_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    full = completion_loss(_returns(model(**model_inputs(batch))), batch)
    full.backward()
    torch.testing.assert_close(fast, full, rtol=1e-12, atol=0)
    for got, want in zip(fast_grads, (p.grad for p in model.parameters())):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_completion_loss_is_the_mean_over_completion_tokens(tok, tmp_path):
    """By hand: the completion's tokens (encoded on their own, clean boundary after the newline) and EOS."""
    path = tmp_path / "p.jsonl"
    pairs = [("what is two plus two?", "four."), ("the fox?", "jumps over the lazy dog.")]
    path.write_text("\n".join(json.dumps({"prompt": p, "completion": c}) for p, c in pairs))
    got = load_instruct_jsonl(path, tok, InstructFormat(max_len=64, format="plain"))
    model = model_for(tok)
    batch = make_batch([[s] for s in got])
    with torch.no_grad():
        loss = completion_loss(model, batch)
        logits = model(**model_inputs(batch))
    terms = []
    for row, (prompt, completion) in enumerate(pairs):
        head = len(tok.encode(prompt + "\n"))
        targets = tok.encode(completion) + [tok.eos_id]
        logp = logits[row].log_softmax(-1)
        terms += [-logp[head - 1 + j, t] for j, t in enumerate(targets)]
    assert torch.allclose(loss, torch.stack(terms).mean(), atol=1e-6)


def test_label_norm_makes_micro_batches_add_up_to_the_token_mean(samples, tok):
    """The loop divides each micro-batch loss by the number of micro-batches and sums: with `label_norm`
    that is the mean over every trained token of the step, although the halves hold different counts."""
    model = model_for(tok)
    batches = InstructBatches(Mixture({"chat": samples}, seed=3), batch_size=6, seq_len=128)
    full = batches(0)
    halves = [batches(0, range(0, 3)), batches(0, range(3, 6))]
    counts = [int((h["labels"] != IGNORE_INDEX).sum()) for h in halves]
    assert counts[0] != counts[1]
    with torch.no_grad():
        whole = completion_loss(model, full)
        summed = sum(completion_loss(model, h) / 2 for h in halves)
        by_token = token_losses(model, full).sum() / (full["labels"] != IGNORE_INDEX).sum()
        mean_of_means = (
            sum(completion_loss(model, {k: v for k, v in h.items() if k != "label_norm"}) for h in halves) / 2
        )
    assert torch.allclose(whole, by_token, atol=1e-6) and torch.allclose(summed, whole, atol=1e-6)
    assert not torch.allclose(mean_of_means, whole, atol=1e-4)


def test_eval_batches_and_per_task_loss_are_token_means(samples, tok):
    model = model_for(tok)
    sets = {"a": samples[:7], "b": samples[7:12]}
    with torch.no_grad():
        per_sample = {k: sample_losses(model, make_batch([[s] for s in v])) for k, v in sets.items()}
        for name, batches in ((n, eval_batches(v, batch_size=3)) for n, v in sets.items()):
            assert len(batches) > 1
            loop_figure = sum(float(completion_loss(model, b)) for b in batches) / len(batches)  # Parallel.evaluate
            weights = torch.tensor([s.n_trained for s in sets[name]], dtype=torch.float64)
            expected = float((per_sample[name] * weights).sum() / weights.sum())
            assert loop_figure == pytest.approx(expected, abs=1e-6)
            packed = eval_batches(sets[name], batch_size=2, pack=True, seq_len=128)
            assert sum(float(completion_loss(model, b)) for b in packed) / len(packed) == pytest.approx(
                expected, abs=1e-6
            )
    model.train()
    result = per_task_loss(model, sets, batch_size=3)
    assert model.training  # the mode is restored
    for name in sets:
        weights = torch.tensor([s.n_trained for s in sets[name]], dtype=torch.float64)
        assert result[name] == pytest.approx(float((per_sample[name] * weights).sum() / weights.sum()), abs=1e-6)


def test_training_lowers_the_completion_loss(samples, tok):
    model = model_for(tok).train()
    batches = InstructBatches(Mixture({"chat": samples}, seed=0), batch_size=4, seq_len=128, pack=True)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    eval_set = eval_batches(samples, batch_size=8)
    with torch.no_grad():
        before = sum(float(completion_loss(model, b)) for b in eval_set)
    for step in range(30):
        opt.zero_grad()
        completion_loss(model, batches(step)).backward()
        opt.step()
    with torch.no_grad():
        after = sum(float(completion_loss(model, b)) for b in eval_set)
    assert after < 0.8 * before


# ----------------------------------------------------------------------------- step → batch


@pytest.mark.parametrize("pack", [False, True])
def test_batches_are_a_pure_function_of_seed_and_step(samples, pack):
    def make(seed):
        return InstructBatches(Mixture({"chat": samples}, seed=seed), batch_size=5, seq_len=128, pack=pack)

    forward, backward = make(7), make(7)
    in_order = [forward(step) for step in range(12)]  # several epochs
    for step in reversed(range(12)):  # a resumed run asks for steps in its own order, from a fresh object
        again = backward(step)
        assert again.keys() == in_order[step].keys()
        assert all(torch.equal(again[k], in_order[step][k]) for k in again)
    part = make(7)(9, range(2, 4))  # a rank's rows are those rows of the global batch, bit for bit
    assert all(torch.equal(part[k], in_order[9][k][2:4]) for k in part)
    other = make(8)(0)
    assert not torch.equal(other["input_ids"], in_order[0]["input_ids"][:, : other["input_ids"].shape[1]])


def test_unpacked_epochs_show_every_sample_once(samples):
    batches = InstructBatches(Mixture({"chat": samples}, seed=1), batch_size=4, seq_len=128)
    for epoch in range(2):
        seen = [s.origin for step in range(6 * epoch, 6 * epoch + 6) for row in batches.step_rows(step) for s in row]
        assert sorted(seen) == sorted(s.origin for s in samples)


def test_packed_rows_fit_and_cover_the_epoch(samples):
    batches = InstructBatches(Mixture({"chat": samples}, seed=1), batch_size=2, seq_len=100, pack=True)
    epoch = batches.epoch_rows(0)
    assert sorted(s.origin for row in epoch for s in row) == sorted(s.origin for s in samples)
    assert all(sum(len(s) - 1 for s in row) <= 100 for row in epoch) and len(epoch) < len(samples)
    batch = batches(0)
    assert batch["input_ids"].shape[1] <= 100 and "segment_ids" in batch


def test_samples_longer_than_the_rows_are_refused(samples):
    with pytest.raises(DataError, match=rf"{samples[0].origin}: a sample of \d+ tokens"):
        InstructBatches(Mixture({"chat": samples}), batch_size=2, seq_len=len(samples[0]) - 2)


# ----------------------------------------------------------------------------- mixtures


def test_mixture_probabilities():
    sizes = {"big": 900, "small": 100}
    assert mixture_probabilities(sizes) == pytest.approx({"big": 0.9, "small": 0.1})
    assert mixture_probabilities(sizes, temperature=2.0) == pytest.approx({"big": 0.75, "small": 0.25})  # 30 : 10
    assert mixture_probabilities(sizes, temperature=1e9) == pytest.approx({"big": 0.5, "small": 0.5})
    assert mixture_probabilities(sizes, weights={"big": 1, "small": 3}) == pytest.approx({"big": 0.25, "small": 0.75})
    assert largest_remainder({"a": 0.5, "b": 0.25, "c": 0.25}, 7) == {"a": 3, "b": 2, "c": 2}  # 3.5, 1.75, 1.75
    assert largest_remainder({"a": 0.5, "b": 0.5}, 3) == {"a": 2, "b": 1}  # a tie goes to the earlier name


@pytest.mark.parametrize(
    "kwargs",
    [
        {"weights": {"big": 1, "small": 1}, "temperature": 2.0},
        {"weights": {"big": 1}},
        {"weights": {"big": 1, "small": 1, "other": 1}},
        {"weights": {"big": -1, "small": 1}},
        {"weights": {"big": 0, "small": 0}},
        {"temperature": 0},
    ],
)
def test_bad_mixture_settings(kwargs):
    with pytest.raises(ConfigError):
        mixture_probabilities({"big": 900, "small": 100}, **kwargs)


def test_mixture_samples_tasks_in_proportion_and_cycles_each_dataset(tok, tmp_path):
    big, small = load(tok, tmp_path, "big", 30, seed=1), load(tok, tmp_path, "small", 6, seed=2)
    mix = Mixture({"big": big, "small": small}, temperature=3.0, seed=5)
    assert sum(mix.quotas.values()) == 36 and mix.quotas["small"] > 6  # the small task is upsampled
    batches = InstructBatches(mix, batch_size=4, seq_len=128)
    drawn = [s for step in range(36 * 3 // 4) for row in batches.step_rows(step) for s in row]  # three epochs
    tasks = Counter(s.task for s in drawn)
    assert tasks == {"big": 3 * mix.quotas["big"], "small": 3 * mix.quotas["small"]}
    for name, dataset in (("big", big), ("small", small)):  # passes over each dataset: no sample is favoured
        seen = Counter(s.origin for s in drawn if s.task == name)
        assert set(seen) == {s.origin for s in dataset} and max(seen.values()) - min(seen.values()) <= 1
    assert all(s.task == "big" for s in mix.datasets["big"])
    with pytest.raises(ConfigError, match="too small"):
        Mixture({"big": big, "small": small}, weights={"big": 1000, "small": 1}, epoch_size=10)
    with pytest.raises(DataError, match="no samples"):
        Mixture({"big": big, "empty": []})
