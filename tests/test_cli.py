import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmstack.cli import build_parser, main
from lmstack.weights.checkpoint import list_checkpoints
from lmstack.weights.dcp import is_dcp_checkpoint
from testutil import tiny_text_overrides, write_tiny_gpt_recipe


def subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_top_level_help():
    proc = subprocess.run([sys.executable, "-m", "lmstack", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for name in subcommands():
        assert name in proc.stdout


@pytest.mark.parametrize("name", subcommands())
def test_every_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    assert "usage: lmstack" in capsys.readouterr().out


def test_bad_recipe_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "r.yaml"
    bad.write_text("name: x\nobjective: causal_lm\nmodel: {preset: gpt-tiny}\ntrain: {stepz: 3}\n")
    assert main(["train", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "train.stepz: unknown key" in err and "steps" in err


# ----------------------------------------------------------------------------- generate on a trained run


@pytest.fixture(scope="module")
def code_corpus(tmp_path_factory) -> Path:
    """Python-looking lines, so that a "def " prompt means something to the tiny tokenizer."""
    root = tmp_path_factory.mktemp("code")
    for i in range(30):
        body = "\n".join(f"def f{i}_{j}(x, y):\n    return x * {j} + y - {i}\n" for j in range(20))
        (root / f"mod{i:02d}.py").write_text(body)
    return root


@pytest.fixture(scope="module")
def gpt_run(code_corpus, tmp_path_factory) -> Path:
    """A run directory of the tiny GPT recipe (shrunk), with checkpoints at steps 2 and 4."""
    run = tmp_path_factory.mktemp("gpt_run")
    args = [
        "train",
        "recipes/pretrain_gpt_tiny.yaml",
        *tiny_text_overrides(run, code_corpus),
        "model.d_model=32",
        "model.n_layers=1",
        "train.steps=4",
        "train.save_every=2",
        "train.eval_every=0",
        "train.batch_size=4",
        "train.lr=1e-2",
        "train.warmup_steps=0",
        "train.progress=false",
    ]
    assert main(args) == 0
    assert [p.name for p in list_checkpoints(run)] == ["step-00000002", "step-00000004"]
    return run


def generate_out(capsys, model: Path, *extra: str) -> str:
    capsys.readouterr()
    args = ["generate", "--model", str(model), "--prompt", "def ", "--max-new-tokens", "8", "--temperature", "0.8"]
    assert main([*args, *extra]) == 0
    return capsys.readouterr().out


def test_generate_num_samples_match_separate_seeds(gpt_run, capsys):
    out = generate_out(capsys, gpt_run, "--num-samples", "2", "--seed", "3")
    parts = re.split(r"^--- sample (\d+) \(seed (\d+)\)\n", out, flags=re.MULTILINE)
    assert parts[0] == "" and parts[1:3] == ["1", "3"] and parts[4:6] == ["2", "4"]
    samples = [parts[3], parts[6]]
    assert samples[0] != samples[1]  # different seeds, different draws
    assert samples == [generate_out(capsys, gpt_run, "--seed", "3"), generate_out(capsys, gpt_run, "--seed", "4")]


def test_generate_on_a_run_directory_uses_its_latest_good_checkpoint(gpt_run, tmp_path, capsys):
    latest, previous = generate_out(capsys, gpt_run / "step-00000004"), generate_out(capsys, gpt_run / "step-00000002")
    assert latest != previous
    assert generate_out(capsys, gpt_run) == latest
    run = tmp_path / "run"
    shutil.copytree(gpt_run, run)
    with open(run / "step-00000004" / "model.safetensors", "r+b") as f:
        f.truncate(100)
    out = generate_out(capsys, run)
    assert "skipping checkpoint step-00000004" in out and out.endswith("\n" + previous)


def test_generate_from_an_empty_prompt_starts_at_bos(gpt_run, capsys):
    from lmstack.generate.engine import Engine
    from lmstack.generate.sampling import GenerationConfig
    from lmstack.weights.load import load_pretrained

    assert (
        main(
            [
                "generate",
                "--model",
                str(gpt_run),
                "--prompt",
                "",
                "--max-new-tokens",
                "12",
                "--temperature",
                "0.8",
                "--seed",
                "5",
                "--no-stream",
            ]
        )
        == 0
    )
    model, tok = load_pretrained(gpt_run)
    config = GenerationConfig(max_new_tokens=12, temperature=0.8, seed=5)  # generate's other defaults
    [expected] = Engine(model.eval(), tok).generate_ids([[tok.bos_id]], config)
    assert expected.token_ids  # it generated something, so the comparison below means something
    assert capsys.readouterr().out == expected.text + "\n"


def test_num_samples_must_be_positive(capsys):
    assert main(["generate", "--model", "unused", "--prompt", "x", "--num-samples", "0"]) == 2
    assert "--num-samples must be at least 1" in capsys.readouterr().err


def test_sample_subcommand_is_gone(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["sample", "runs/x"])
    assert exc.value.code == 2
    assert "invalid choice: 'sample'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def dcp_run(code_corpus, tmp_path_factory) -> Path:
    """A run whose checkpoint holds DCP shards only: a multi-process strategy run as a group of one process,
    without the gathered model.safetensors."""
    tmp = tmp_path_factory.mktemp("dcp_run")
    recipe = write_tiny_gpt_recipe(
        tmp, code_corpus, "dcp", steps=2, eval_every=0, strategy="ddp", consolidate_checkpoints=False
    )
    assert main(["train", str(recipe), f"out_dir={tmp / 'run'}"]) == 0
    ckpt = tmp / "run" / "step-00000002"
    assert is_dcp_checkpoint(ckpt) and not (ckpt / "model.safetensors").exists()
    return tmp / "run"


def test_export_dcp_checkpoint_to_one_safetensors_file(dcp_run, tmp_path, capsys):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from lmstack.weights.hf import state_dict_to_hf
    from lmstack.weights.load import load_pretrained

    ckpt = dcp_run / "step-00000002"
    out = tmp_path / "exported"
    capsys.readouterr()
    assert main(["export", str(dcp_run), str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(ckpt) in printed and str(out / "model.safetensors") in printed and "HF gpt2 key names" in printed
    # the shards, read by torch's own converter, in a model of the checkpoint's config, renamed to HF keys
    dcp_to_torch_save(ckpt / "dcp", tmp_path / "shards.pt")
    reference, _ = load_pretrained(ckpt)
    reference.load_state_dict(torch.load(tmp_path / "shards.pt")["model"])
    expected, written = state_dict_to_hf(reference), load_file(out / "model.safetensors")
    assert written.keys() == expected.keys()
    assert all(torch.equal(written[k], expected[k]) for k in expected)
    exported, tok = load_pretrained(out)
    assert tok is not None
    ids = torch.tensor([tok.encode("def f1(x, y):")])
    with torch.no_grad():
        torch.testing.assert_close(exported(ids), reference(ids), atol=1e-6, rtol=0)


def test_export_errors_are_clear(dcp_run, tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    assert "nope does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad"
    shutil.copytree(dcp_run / "step-00000002", bad / "step-00000002")
    with open(bad / "step-00000002" / "dcp" / "__0_0.distcp", "r+b") as f:
        f.truncate(10)
    assert main(["export", str(bad / "step-00000002"), str(tmp_path / "out")]) == 2
    assert "__0_0.distcp has 10 bytes" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    assert main(["export", str(dcp_run), str(busy)]) == 2
    assert "pass --force" in capsys.readouterr().err and (busy / "keep.txt").is_file()
    assert main(["export", str(dcp_run), str(dcp_run)]) == 2
    assert "would replace it" in capsys.readouterr().err and is_dcp_checkpoint(dcp_run / "step-00000002")
    assert not (tmp_path / "out").exists()


def test_export_of_a_model_without_hf_layout_keeps_lmstack_keys(tmp_path, capsys):
    from lmstack.config import to_dict
    from lmstack.models import build_model
    from lmstack.weights.checkpoint import save_checkpoint
    from testutil import tiny_config

    model = build_model(tiny_config("t5-tiny")).eval()
    extras = lambda d: (d / "config.json").write_text(json.dumps({"model": to_dict(model.cfg)}))  # noqa: E731
    ckpt = save_checkpoint(tmp_path / "run", 1, model, None, write_extras=extras)
    capsys.readouterr()
    assert main(["export", str(ckpt), str(tmp_path / "out")]) == 0
    assert "lmstack's own key names" in capsys.readouterr().out
    written, state = load_file(tmp_path / "out" / "model.safetensors"), model.state_dict()
    assert written and set(written) <= set(state)
    assert all(torch.equal(v, state[k]) for k, v in written.items())
