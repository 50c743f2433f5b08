import numpy as np
import pytest
import torch
from gguf import GGUFWriter

from lmstack.errors import WeightsError
from lmstack.models import DecoderLM, model_config
from lmstack.weights.gguf import (
    load_gguf,
    permute_qk,
    read_gguf,
    tokenizer_from_gguf,
    unpermute_qk,
)
from lmstack.weights.gguf_write import save_gguf


def tiny_llama(vocab_size: int, tie: bool = True) -> DecoderLM:
    cfg = model_config(
        "llama-tiny",
        vocab_size=vocab_size,
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        d_ff=96,
        max_seq_len=64,
        rope_theta=5000.0,
        norm_eps=1e-5,
        tie_embeddings=tie,
    )
    model = DecoderLM(cfg).eval()
    with torch.no_grad():  # non-trivial norm weights, so that a wrong mapping shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


def test_unpermute_inverts_llama_cpp_permutation():
    w = np.random.default_rng(0).standard_normal((4 * 16, 8)).astype(np.float32)
    assert np.array_equal(unpermute_qk(permute_qk(w, 4), 4), w)
    assert not np.array_equal(permute_qk(w, 4), w)
    # llama.cpp interleaves the two halves of each head: row 1 of a permuted head is row head_dim/2
    assert np.array_equal(permute_qk(w, 4)[1], w[8])


@pytest.mark.parametrize("tie", [True, False])
def test_f32_roundtrip_is_exact(tmp_path, tiny_tokenizer, tie):
    model = tiny_llama(tiny_tokenizer.vocab_size, tie=tie)
    path = save_gguf(model, tiny_tokenizer, tmp_path / "tiny.gguf")
    loaded, tok = load_gguf(path)
    assert loaded.cfg.tie_embeddings == tie
    for field in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "rope_theta", "vocab_size", "max_seq_len"):
        assert getattr(loaded.cfg, field) == getattr(model.cfg, field), field
    ids = torch.randint(0, model.cfg.vocab_size, (2, 20))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    text = "def add(a, b): the quick fox 123"
    assert tok.encode(text) == tiny_tokenizer.encode(text)
    assert tok.chat_template == tiny_tokenizer.chat_template
    assert (tok.eos_id, tok.bos_id) == (tiny_tokenizer.eos_id, tiny_tokenizer.bos_id)


# bound on |dequantized - original| relative to the largest |weight| of the tensor
BOUNDS = {"F16": 1e-3, "BF16": 1e-2, "Q8_0": 1e-2, "Q4_0": 0.15, "Q4_1": 0.1}


@pytest.mark.parametrize("qtype", list(BOUNDS))
def test_quantized_types_dequantize_close(tmp_path, tiny_tokenizer, qtype):
    model = tiny_llama(tiny_tokenizer.vocab_size)
    loaded, _ = load_gguf(save_gguf(model, tiny_tokenizer, tmp_path / f"tiny-{qtype}.gguf", qtype=qtype))
    ref, got = model.state_dict(), loaded.state_dict()
    assert got.keys() == ref.keys()
    for name, w in ref.items():
        err = (got[name] - w).abs().max().item()
        if w.ndim == 1:  # norms are always stored as F32
            assert err == 0.0, name
        else:
            assert 0 < err <= BOUNDS[qtype] * w.abs().max().item(), (name, err)
    ids = torch.randint(0, model.cfg.vocab_size, (1, 16))
    with torch.no_grad():
        a, b = model(ids).flatten(), loaded(ids).flatten()
    assert torch.cosine_similarity(a, b, dim=0) > (0.999 if qtype in ("F16", "BF16", "Q8_0") else 0.9)


def test_tokenizer_metadata_marks_control_tokens_special(tmp_path, tiny_tokenizer):
    path = save_gguf(tiny_llama(tiny_tokenizer.vocab_size), tiny_tokenizer, tmp_path / "t.gguf")
    tok = tokenizer_from_gguf(read_gguf(path).metadata)
    text = "<|im_start|>user\nhello<|im_end|>"
    ids = tok.encode(text)
    assert ids[0] == tok.token_to_id("<|im_start|>")
    assert tok.decode(ids) == "user\nhello"  # special tokens skipped
    assert tok.decode(ids, skip_special_tokens=False) == text


def test_missing_and_foreign_files_raise(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_gguf(tmp_path / "nope.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"this is not a gguf file at all" * 10)
    with pytest.raises(WeightsError, match="not a readable GGUF"):
        load_gguf(junk)
    other = tmp_path / "other.gguf"
    w = GGUFWriter(other, "gpt2")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(WeightsError, match="architecture 'gpt2'"):
        load_gguf(other)


def test_missing_tensor_is_named(tmp_path, tiny_tokenizer):
    model = tiny_llama(tiny_tokenizer.vocab_size)
    path = save_gguf(model, tiny_tokenizer, tmp_path / "t.gguf")
    gf = read_gguf(path)
    from lmstack.weights.gguf import config_from_gguf, state_dict_from_gguf

    del gf.tensors["blk.1.ffn_up.weight"]
    with pytest.raises(WeightsError, match="blk.1.ffn_up.weight"):
        state_dict_from_gguf(gf, config_from_gguf(gf.metadata))


def test_save_rejects_non_llama_models(tmp_path, tiny_tokenizer):
    gpt = DecoderLM(
        model_config(
            "gpt-tiny", vocab_size=tiny_tokenizer.vocab_size, d_model=32, n_layers=1, n_heads=4, d_ff=64, max_seq_len=32
        )
    )
    with pytest.raises(WeightsError, match="Llama-style"):
        save_gguf(gpt, tiny_tokenizer, tmp_path / "g.gguf")
