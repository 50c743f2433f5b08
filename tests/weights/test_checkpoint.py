import json

import pytest
import torch

from lmstack.errors import CheckpointError
from lmstack.models import DecoderLM
from lmstack.weights.checkpoint import (
    latest_good_checkpoint,
    list_checkpoints,
    load_trainer_state,
    load_weights,
    remove_partial_saves,
    resolve_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from testutil import tiny_config


def save(tmp_path, step, model=None, **kw):
    model = model or DecoderLM(tiny_config("llama-tiny"))
    return save_checkpoint(tmp_path, step, model, {"step": step, "x": torch.arange(3)}, **kw)


def test_round_trip_with_tied_weights(tmp_path):
    model = DecoderLM(tiny_config("llama-tiny"))
    path = save(tmp_path, 5, model)
    assert verify_checkpoint(path) is None
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.safetensors", "trainer_state.pt"}
    other = DecoderLM(tiny_config("llama-tiny"))
    load_weights(other, path)
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name
    assert other.lm_head.weight is other.embed.tokens.weight
    assert load_trainer_state(path)["step"] == 5


def test_truncated_file_is_detected(tmp_path):
    path = save(tmp_path, 1)
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    assert "truncated" in verify_checkpoint(path, raise_error=False)
    with pytest.raises(CheckpointError, match="truncated"):
        verify_checkpoint(path)


def test_flipped_byte_is_detected(tmp_path):
    path = save(tmp_path, 1)
    f = path / "trainer_state.pt"
    data = bytearray(f.read_bytes())
    data[10] ^= 1
    f.write_bytes(bytes(data))
    assert "checksum" in verify_checkpoint(path, raise_error=False)


def test_missing_manifest_and_missing_file(tmp_path):
    a = save(tmp_path, 1)
    (a / "manifest.json").unlink()
    assert "manifest" in verify_checkpoint(a, raise_error=False)
    b = save(tmp_path, 2)
    (b / "trainer_state.pt").unlink()
    assert "missing" in verify_checkpoint(b, raise_error=False)
    c = save(tmp_path, 3)
    (c / "manifest.json").write_text("{not json")
    assert "manifest" in verify_checkpoint(c, raise_error=False)


def test_latest_good_falls_back_and_reports(tmp_path):
    save(tmp_path, 1)
    save(tmp_path, 2)
    bad = save(tmp_path, 3)
    (bad / "model.safetensors").write_bytes(b"garbage")
    warnings = []
    assert latest_good_checkpoint(tmp_path, warn=warnings.append).name == "step-00000002"
    assert len(warnings) == 1 and "step-00000003" in warnings[0] and "falling back" in warnings[0]
    assert resolve_checkpoint(tmp_path).name == "step-00000002"
    with pytest.raises(CheckpointError):
        resolve_checkpoint(bad)


def test_keep_prunes_old_checkpoints_and_partial_saves_are_removed(tmp_path):
    for step in range(1, 5):
        save(tmp_path, step, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000003", "step-00000004"]
    (tmp_path / ".tmp-step-00000005-123").mkdir()
    assert len(remove_partial_saves(tmp_path)) == 1
    assert not list(tmp_path.glob(".tmp-*"))


def test_resaving_a_step_replaces_the_old_directory(tmp_path):
    bad = save(tmp_path, 7)
    (bad / "model.safetensors").write_bytes(b"garbage")
    good = save(tmp_path, 7)
    assert verify_checkpoint(good) is None


def test_weights_that_do_not_fit_are_rejected(tmp_path):
    path = save(tmp_path, 1, DecoderLM(tiny_config("llama-tiny")))
    with pytest.raises(CheckpointError, match="do not fit|cannot read"):
        load_weights(DecoderLM(tiny_config("llama-tiny", n_layers=3)), path)


def test_corrupt_trainer_state_is_a_checkpoint_error(tmp_path):
    path = save(tmp_path, 1)
    (path / "trainer_state.pt").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(CheckpointError, match="trainer_state"):
        load_trainer_state(path)
