import pytest
import torch

from lmstack.errors import ConfigError
from lmstack.generate.sampling import (
    GenerationConfig,
    apply_repetition_penalty,
    filter_logits,
    generate,
    sample_next,
    seen_tokens,
)


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits():
    logits = torch.tensor([[2.0, -2.0, 4.0, -1.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 4.0, -1.0]]
    assert apply_repetition_penalty(logits, seen, 1.0) is logits


def test_seen_tokens_ignores_padding():
    ids = torch.tensor([[0, 0, 5, 6], [1, 2, 3, 3]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    seen = seen_tokens(ids, mask, 8)
    assert seen[0].nonzero().flatten().tolist() == [5, 6]
    assert seen[1].nonzero().flatten().tolist() == [1, 2, 3]


def test_top_k_and_top_p_keep_the_expected_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(filter_logits(logits, 1.0, top_k=2)).tolist() == [[True, True, False, False]]
    # nucleus 0.7: 0.5 alone is below, 0.5 + 0.3 reaches it → two tokens stay
    assert torch.isfinite(filter_logits(logits, 1.0, top_p=0.7)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, 1.0, top_p=0.5)).tolist() == [[True, False, False, False]]


def test_per_row_generators_make_batch_sampling_match_single_rows():
    logits = torch.randn(3, 50)
    gens = [torch.Generator().manual_seed(7) for _ in range(3)]
    batch = sample_next(logits, 1.0, generator=gens).tolist()
    single = [sample_next(logits[i : i + 1], 1.0, generator=torch.Generator().manual_seed(7)).item() for i in range(3)]
    assert batch == single


def test_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]])).expand(4000, 3)
    draws = sample_next(logits, 1.0, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=3).float() / 4000
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.03)


@pytest.mark.parametrize(
    "bad",
    [
        dict(temperature=-1),
        dict(top_p=0.0),
        dict(top_k=-2),
        dict(repetition_penalty=0),
        dict(max_new_tokens=-1),
        dict(stop=("",)),
    ],
)
def test_config_validation(bad):
    with pytest.raises(ConfigError):
        GenerationConfig(**bad)


def test_reference_generate_stops_at_stop_ids(model):
    prompt = torch.tensor([[3, 4, 5]])
    free = generate(model, prompt, 12)[0].tolist()
    stop = free[4]
    out = generate(model, prompt, 12, stop_token_ids=[stop])[0].tolist()
    first = free.index(stop)
    assert out == free[: first + 1]


def test_repetition_penalty_reduces_repeats(model):
    prompt = torch.tensor([[3, 4, 5, 3, 4, 5]])
    plain = generate(model, prompt, 40)[0].tolist()
    penalised = generate(model, prompt, 40, repetition_penalty=5.0)[0].tolist()
    assert len(set(penalised)) > len(set(plain))
