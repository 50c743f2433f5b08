import subprocess
import sys

import pytest

from lmstack.cli import build_parser, main


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


def test_train_then_sample(text_corpus, tmp_path, capsys):
    args = ["train", "recipes/pretrain_gpt_tiny.yaml", f"out_dir={tmp_path}", "data.source=files",
            f"data.paths=[{text_corpus}]", "data.seq_len=32", "data.val_fraction=0.2", "tokenizer.vocab_size=300",
            "model.d_model=32", "model.n_layers=1", "train.steps=4", "train.batch_size=4", "train.progress=false"]
    assert main(args) == 0
    assert main(["sample", str(tmp_path), "--prompt", "alpha", "--max-new-tokens", "5", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "done: step 4" in out and out.rstrip().splitlines()[-1].startswith("alpha")
    assert main(["sample", str(tmp_path / "nope")]) == 2
