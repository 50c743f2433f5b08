"""`lmstack export RUN_OR_CHECKPOINT OUT --format safetensors|hf|gguf` on tiny checkpoints: what each format
writes loads elsewhere with our logits, and what cannot be exported (or overwritten) is refused clearly."""

import json

import pytest
import torch
from gguf import LlamaFileType

import lmstack.weights.export as export
from lmstack.cli import main
from lmstack.config import to_dict
from lmstack.errors import WeightsError
from lmstack.models import build_model, model_config
from lmstack.weights.checkpoint import save_checkpoint
from lmstack.weights.gguf import read_gguf
from lmstack.weights.load import load_pretrained

TEXT = "def add(a, b):\n    return a + b  # the quick brown fox 123"
SHAPE = dict(d_model=64, n_layers=2, n_heads=4, d_ff=96, max_seq_len=64)


def tiny(preset: str, vocab_size: int, **overrides):
    """A tiny model with weights large enough (std 0.1, peaked attention) that a mapping mistake shows."""
    model = build_model(model_config(preset, vocab_size=vocab_size, **{**SHAPE, **overrides})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5) if name.endswith("norm.weight") else p.normal_(0.0, 0.1)
            else:
                p.normal_(0.0, 0.3 if "qkv_proj" in name else 0.1)
    return model


def save_run(run_dir, model, tokenizer=None, state_filter=None):
    """A run directory with one checkpoint, laid out as training leaves it (config.json + tokenizer)."""

    def extras(directory):
        (directory / "config.json").write_text(json.dumps({"model": to_dict(model.cfg)}))
        if tokenizer is not None:
            tokenizer.save(directory)

    return save_checkpoint(run_dir, 3, model, None, write_extras=extras, state_filter=state_filter)


def logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids]))[0]


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize(("preset", "family"), [("llama-tiny", "llama"), ("gpt-tiny", "gpt2")])
def test_hf_format_loads_in_transformers_with_our_logits(tmp_path, tiny_tokenizer, capsys, preset, family):
    transformers = pytest.importorskip("transformers")
    extra = {"n_kv_heads": 2, "tie_embeddings": False} if family == "llama" else {}
    model = tiny(preset, tiny_tokenizer.vocab_size, **extra)
    ckpt = save_run(tmp_path / "run", model, tiny_tokenizer)
    out = tmp_path / "hf"
    assert main(["export", str(tmp_path / "run"), str(out), "--format", "hf"]) == 0
    printed = capsys.readouterr().out
    assert str(ckpt) in printed and f"HF {family} directory" in printed
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()
    }
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert hf.config.model_type == family and hf.dtype == torch.float32
    ids = tiny_tokenizer.encode(TEXT)
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits[0]
    # two float32 implementations that sum in different orders: 1e-5 of the largest logit ≈ 170 roundoffs
    assert relative_error(theirs, logits(model, ids)) <= 1e-5
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok.encode(TEXT, add_special_tokens=False) == ids
    messages = [{"role": "user", "content": "hello"}]
    assert hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        tiny_tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    )
    assert hf_tok.eos_token_id == tiny_tokenizer.eos_id


def test_gguf_format_as_a_file_or_a_directory(tmp_path, tiny_tokenizer, capsys):
    model = tiny("llama-tiny", tiny_tokenizer.vocab_size, n_kv_heads=2)
    ckpt = save_run(tmp_path / "my-run", model, tiny_tokenizer)
    ids = tiny_tokenizer.encode(TEXT)
    file = tmp_path / "out" / "tiny.gguf"
    assert main(["export", str(ckpt), str(file), "--format", "gguf"]) == 0
    assert f"to {file}: GGUF llama, F32 weights" in capsys.readouterr().out
    loaded, tok = load_pretrained(file)
    assert torch.equal(logits(loaded, ids), logits(model, ids)) and tok.encode(TEXT) == ids
    meta = read_gguf(file).metadata
    assert meta["general.name"] == "my-run" and meta["general.file_type"] == LlamaFileType.ALL_F32
    assert (
        main(["export", str(tmp_path / "my-run"), str(tmp_path / "dir"), "--format", "gguf", "--gguf-type", "Q8_0"])
        == 0
    )
    assert [p.name for p in (tmp_path / "dir").iterdir()] == ["model.gguf"]
    meta = read_gguf(tmp_path / "dir" / "model.gguf").metadata
    assert meta["general.file_type"] == LlamaFileType.MOSTLY_Q8_0


def test_default_format_is_still_safetensors(tmp_path, tiny_tokenizer, capsys):
    model = tiny("llama-tiny", tiny_tokenizer.vocab_size)
    save_run(tmp_path / "run", model, tiny_tokenizer)
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "st")]) == 0
    assert f"{tmp_path / 'st' / 'model.safetensors'}: HF llama key names" in capsys.readouterr().out
    loaded, _ = load_pretrained(tmp_path / "st")
    ids = tiny_tokenizer.encode(TEXT)
    assert torch.equal(logits(loaded, ids), logits(model, ids))


def test_bitnet_has_no_hf_layout_and_keeps_its_own_names(tmp_path, tiny_tokenizer, capsys):
    """A BitNet model written with HF Llama names would load in transformers as a dense (wrong) model."""
    model = tiny("llama-tiny", tiny_tokenizer.vocab_size, bitnet=True)
    save_run(tmp_path / "run", model, tiny_tokenizer)
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "hf"), "--format", "hf"]) == 2
    assert "BitNet model has no HF layout" in capsys.readouterr().err and not (tmp_path / "hf").exists()
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "st")]) == 0
    assert "lmstack's own key names" in capsys.readouterr().out
    loaded, _ = load_pretrained(tmp_path / "st")
    ids = tiny_tokenizer.encode(TEXT)
    assert torch.equal(logits(loaded, ids), logits(model, ids))


@pytest.mark.parametrize(
    ("preset", "fmt", "message"),
    [
        ("gpt-tiny", "gguf", "GGUF export supports Llama-style decoders only.*--format hf"),
        ("bert-tiny", "gguf", "GGUF export supports Llama-style decoders only.*this model is: encoder, layernorm"),
        ("t5-tiny", "hf", "--format hf: this model matches no HF layout.*Llama.*GPT-2.*BERT.*--format safetensors"),
    ],
)
def test_unsupported_families_are_refused_naming_what_is_supported(
    tmp_path, tiny_tokenizer, capsys, preset, fmt, message
):
    model = tiny(preset, tiny_tokenizer.vocab_size)
    save_run(tmp_path / "run", model, tiny_tokenizer)
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "out"), "--format", fmt]) == 2
    assert capsys.readouterr().err.startswith("error: ") and not (tmp_path / "out").exists()
    with pytest.raises(WeightsError, match=message):
        export.export_checkpoint(tmp_path / "run", tmp_path / "out", fmt)


@pytest.mark.parametrize("fmt", ["safetensors", "hf", "gguf"])
def test_adapter_only_checkpoints_need_merge_lora(tmp_path, tiny_tokenizer, capsys, fmt):
    model = tiny("llama-tiny", tiny_tokenizer.vocab_size)
    save_run(tmp_path / "run", model, tiny_tokenizer, state_filter=lambda name: "norm" in name)
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "out"), "--format", fmt]) == 2
    err = capsys.readouterr().err
    assert "holds only adapter weights" in err and "pass --merge-lora" in err
    assert not (tmp_path / "out").exists()


def test_gguf_needs_a_tokenizer(tmp_path, capsys):
    save_run(tmp_path / "run", tiny("llama-tiny", 97))
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "m.gguf"), "--format", "gguf"]) == 2
    assert "no tokenizer.json" in capsys.readouterr().err and not (tmp_path / "m.gguf").exists()


def test_outputs_are_replaced_only_with_force(tmp_path, tiny_tokenizer, capsys):
    model = tiny("llama-tiny", tiny_tokenizer.vocab_size)
    run = tmp_path / "run"
    save_run(run, model, tiny_tokenizer)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    file = tmp_path / "m.gguf"
    file.write_bytes(b"old")
    for out, fmt in ((busy, "hf"), (busy, "gguf"), (file, "gguf")):
        assert main(["export", str(run), str(out), "--format", fmt]) == 2
        assert "pass --force" in capsys.readouterr().err
    assert (busy / "keep.txt").read_text() == "mine" and file.read_bytes() == b"old"
    assert main(["export", str(run), str(file), "--format", "gguf", "--force"]) == 0
    assert main(["export", str(run), str(busy), "--format", "hf", "--force"]) == 0
    assert not (busy / "keep.txt").exists() and (busy / "config.json").is_file()
    assert read_gguf(file).metadata["general.architecture"] == "llama"
    # a file where a directory goes, a directory where the .gguf file goes, the run itself
    for out, fmt, message in (
        (file, "hf", "is a file"),
        (tmp_path / "d.gguf", "gguf", "is a directory"),
        (run, "gguf", "would replace it"),
    ):
        if message == "is a directory":
            out.mkdir()
        assert main(["export", str(run), str(out), "--format", fmt, "--force"]) == 2
        assert message in capsys.readouterr().err


def test_a_failed_export_leaves_the_old_output(tmp_path, tiny_tokenizer, monkeypatch):
    model = tiny("llama-tiny", tiny_tokenizer.vocab_size)
    save_run(tmp_path / "run", model, tiny_tokenizer)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")

    def half_written(model, tok, path, **kwargs):
        path.write_bytes(b"GGUF partial")
        raise OSError("disk full")

    monkeypatch.setattr(export, "save_gguf", half_written)
    with pytest.raises(OSError, match="disk full"):
        export.export_checkpoint(tmp_path / "run", out, "gguf", force=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run"]  # no temp directory left behind


def test_unknown_format_and_type_are_rejected(tmp_path, capsys):
    for bad in (["--format", "onnx"], ["--format", "gguf", "--gguf-type", "q2_k"]):
        with pytest.raises(SystemExit) as exc:
            main(["export", str(tmp_path), str(tmp_path / "out"), *bad])
        assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err
