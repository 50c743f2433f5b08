from dataclasses import replace

import pytest

from lmstack.errors import ConfigError, DataError
from lmstack.generate.engine import Completion, Engine
from lmstack.generate.rollout import pad_completions, sequence_logprobs
from lmstack.generate.sampling import GenerationConfig

PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [3], [20, 21, 22, 23]]
SAMPLED = GenerationConfig(max_new_tokens=10, temperature=1.0, seed=4, logprobs=True)


def rollouts(model):
    """A sampled batch where one row stops early on a stop id, so the completions have different lengths."""
    engine = Engine(model)
    free = engine.generate_ids(PROMPTS, SAMPLED)
    stop = free[1].sampled_ids[2]
    out = engine.generate_ids(PROMPTS, replace(SAMPLED, stop_token_ids=[stop]))
    assert len({len(c.sampled_ids) for c in out}) > 1
    return out


def test_padded_batch_masks_exactly_the_sampled_tokens(model):
    out = rollouts(model)
    batch = pad_completions(out, pad_id=-1)
    lengths = [len(c.sampled_ids) for c in out]
    assert batch.tokens.shape == batch.logprobs.shape == batch.mask.shape == (3, max(lengths))
    assert batch.mask.sum(1).tolist() == lengths
    for i, c in enumerate(out):
        n = lengths[i]
        assert batch.mask[i, :n].all() and not batch.mask[i, n:].any()
        assert batch.tokens[i, :n].tolist() == c.sampled_ids and (batch.tokens[i, n:] == -1).all()
        assert batch.logprobs[i, :n].tolist() == pytest.approx(c.logprobs)
        assert (batch.logprobs[i, n:] == 0).all()


def test_without_recorded_logprobs_the_batch_has_none():
    batch = pad_completions([Completion([1], "", "length", 2, [1]), Completion([], "", "stop", 2, [7])])
    assert batch.logprobs is None and batch.tokens.tolist() == [[1], [7]] and batch.mask.all()
    empty = pad_completions([Completion([], "", "length", 2, [], [])])
    assert empty.tokens.shape == (1, 1) and not empty.mask.any()
    with pytest.raises(ConfigError, match="logprobs=True"):
        pad_completions([Completion([1], "", "length", 2, [1], [-0.5]), Completion([1], "", "length", 2, [1])])
    with pytest.raises(DataError):
        pad_completions([])


def test_sequence_logprobs_rescore_the_rollout_with_grad(model):
    out = rollouts(model)
    batch = pad_completions(out)
    new = sequence_logprobs(model, PROMPTS, batch)
    assert new.shape == batch.tokens.shape and new.requires_grad
    assert (new - batch.logprobs).abs().max().item() <= 1e-5  # same policy: ratio 1 on every token
    assert (new[~batch.mask] == 0).all()
    (new * batch.mask).sum().backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0
    with pytest.raises(DataError):
        sequence_logprobs(model, PROMPTS[:2], batch)
