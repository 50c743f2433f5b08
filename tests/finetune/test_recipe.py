"""`kind: finetune` recipes end to end on a tiny base: LoRA and full fine-tuning through the one training
loop, adapter-only checkpoints that load back on their base, resume, per-task validation, bad input."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from lmstack.augment.pal import FINETUNED_PROMPT, build_prompt
from lmstack.config import to_dict
from lmstack.errors import ConfigError, DataError
from lmstack.fileio import write_json
from lmstack.finetune.load import finetune_checkpoint, load_finetuned
from lmstack.finetune.lora import lora_layers
from lmstack.finetune.recipe import ADAPTER_DIR, build_job
from lmstack.models import DecoderLM
from lmstack.tokenizer import Tokenizer
from lmstack.train.metrics import read_metrics
from lmstack.train.recipe import load_recipe, run_recipe
from lmstack.weights.checkpoint import is_filtered_checkpoint, latest_good_checkpoint, save_checkpoint
from testutil import tiny_config

WORDS = "what is one two three four five plus minus ? the answer is . apples pears a b c"
NUMBERS = ["one", "two", "three", "four", "five"]
ROOT = Path(__file__).resolve().parents[2]


def quiet(message: str) -> None:
    pass


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny random Llama-style model with a BPE tokenizer (it has a chat template), saved as a checkpoint."""
    directory = tmp_path_factory.mktemp("base")
    tok = Tokenizer.train_bpe([WORDS] * 30, vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    model = DecoderLM(tiny_config("llama-tiny", vocab_size=tok.vocab_size, max_seq_len=96))

    def extras(d: Path) -> None:
        write_json(d / "config.json", {"model": to_dict(model.cfg)})
        tok.save(d)

    return save_checkpoint(directory, 0, model, None, extras)


def write_rows(path: Path, task: str, n: int) -> Path:
    rows = []
    for i in range(n):
        a, b = NUMBERS[i % 5], NUMBERS[(i * 2 + 1) % 5]
        if task == "add":
            rows.append({"question": f"what is {a} plus {b} ?", "answer": f"the answer is {a} {b} ."})
        else:
            rows.append({"prompt": f"apples {a} pears {b}", "completion": f"{b} {a}"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_recipe(tmp: Path, base: Path, method: str = "lora", two_tasks: bool = False, **train) -> Path:
    datasets = [
        {
            "name": "add",
            "path": str(write_rows(tmp / "add.jsonl", "add", 24)),
            "val_path": str(write_rows(tmp / "add_val.jsonl", "add", 8)),
            "prompt": "{question}",
            "completion": "{answer}",
        }
    ]
    if two_tasks:
        datasets.append(
            {
                "name": "swap",
                "path": str(write_rows(tmp / "swap.jsonl", "swap", 16)),
                "val_path": str(write_rows(tmp / "swap_val.jsonl", "swap", 8)),
                "weight": 0.5,
            }
        )
    recipe = {
        "kind": "finetune",
        "name": "tiny-ft",
        "base": str(base),
        "method": method,
        "out_dir": str(tmp / "run"),
        "data": {"seq_len": 64, "datasets": datasets},
        "lora": {"r": 4, "alpha": 8, "targets": "all-linear"},
        "train": {
            "steps": 6,
            "batch_size": 4,
            "lr": 5e-3,
            "warmup_steps": 1,
            "eval_every": 3,
            "save_every": 3,
            "eval_batches": 2,
            "log_every": 1,
            "progress": False,
            "device": "cpu",
            **train,
        },
    }
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(ids)


def test_lora_run_saves_only_the_adapter_and_loads_back_on_its_base(tmp_path, base):
    path = write_recipe(tmp_path, base)
    summary = run_recipe(path, log=quiet)
    run = tmp_path / "run"
    ckpt = latest_good_checkpoint(run)
    assert summary["step"] == 6 and ckpt.name.endswith("6")
    assert is_filtered_checkpoint(ckpt)  # adapter weights only
    assert (ckpt / ADAPTER_DIR / "adapter_config.json").is_file()
    assert finetune_checkpoint(run) == ckpt

    tuned, tok = load_finetuned(run)
    plain, _ = load_finetuned(base)
    assert lora_layers(tuned) and not lora_layers(plain)
    ids = torch.tensor([tok.encode("what is two plus three ?")])
    # rebuild the job's model as training left it: the same run resumed at its last step trains nothing
    job, _ = build_job(load_recipe(path), run, log=quiet)
    from lmstack.weights.checkpoint import load_weights

    load_weights(job.model, ckpt, state_filter=job.state_filter)
    torch.testing.assert_close(logits_of(tuned, ids), logits_of(job.model, ids), rtol=0, atol=0)
    assert not torch.equal(logits_of(tuned, ids), logits_of(plain, ids))  # the adapter changed the model
    merged, _ = load_finetuned(run, merge=True)
    assert not lora_layers(merged)
    scale = logits_of(tuned, ids).abs().max()
    torch.testing.assert_close(logits_of(merged, ids), logits_of(tuned, ids), rtol=0, atol=1e-5 * float(scale))
    records = read_metrics(run / "metrics.jsonl")
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0]
    # grads and Adam state exist for the adapter only; the formula leaves out Adam's fp32 step counters
    memory = next(r["memory"] for r in records if "memory" in r)
    n_tensors = sum(".lora." in n for n, _ in tuned.named_parameters())
    assert memory["ranks"][0]["at_rest"]["total"] - memory["formula"]["at_rest"] == 4 * n_tensors


def test_only_adapter_parameters_train_and_the_base_is_untouched(tmp_path, base):
    job, _ = build_job(load_recipe(write_recipe(tmp_path, base)), tmp_path / "run", log=quiet)
    trainable = [n for n, p in job.model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora." in n for n in trainable)
    assert all(job.state_filter(n) for n in trainable)


def test_resume_continues_the_run_exactly(tmp_path, base):
    (tmp_path / "a").mkdir()
    straight = write_recipe(tmp_path / "a", base)
    run_recipe(straight, log=quiet)
    (tmp_path / "b").mkdir()
    crashed = write_recipe(tmp_path / "b", base)
    run_recipe(crashed, log=quiet)
    last = latest_good_checkpoint(tmp_path / "b" / "run")
    shutil.rmtree(last)  # as if the run had died after its step-3 save
    assert latest_good_checkpoint(tmp_path / "b" / "run").name.endswith("3")
    run_recipe(crashed, log=quiet)  # resumes from step 3
    a, _ = load_finetuned(tmp_path / "a" / "run")
    b, _ = load_finetuned(tmp_path / "b" / "run")
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb), na


def test_full_fine_tuning_and_a_two_task_mixture_with_per_task_validation(tmp_path, base):
    run_recipe(write_recipe(tmp_path, base, method="full", two_tasks=True), log=quiet)
    run = tmp_path / "run"
    ckpt = latest_good_checkpoint(run)
    assert not is_filtered_checkpoint(ckpt)
    model, _ = load_finetuned(run)
    assert not lora_layers(model)
    records = read_metrics(run / "metrics.jsonl")
    per_task = [r for r in records if "val_loss/add" in r]
    assert [r["step"] for r in per_task] == [3, 6] and all("val_loss/swap" in r for r in per_task)


def test_bad_recipes_and_rows_name_what_is_wrong(tmp_path, base):
    path = write_recipe(tmp_path, base)
    with pytest.raises(ConfigError, match="either path"):
        load_recipe(path, ["data.datasets=[{path: a.jsonl, task: math_word}]"])
    with pytest.raises(ConfigError, match="at least one dataset"):
        load_recipe(path, ["data.datasets=[]"])
    with pytest.raises(ConfigError, match="distinct"):
        load_recipe(path, [f"data.datasets=[{{path: {tmp_path}/add.jsonl}}, {{path: {tmp_path}/add.jsonl}}]"])
    bad = load_recipe(path, [f"data.datasets=[{{path: {tmp_path}/add.jsonl, prompt: '{{nope}}'}}]"])
    with pytest.raises(DataError, match=r"add\.jsonl:1: .*nope"):
        build_job(bad, tmp_path / "run", log=quiet)
    with pytest.raises(ConfigError, match="nothing_here. matches no linear layer"):
        build_job(load_recipe(path, ["lora.targets=[nothing_here]"]), tmp_path / "run", log=quiet)
    with pytest.raises(ConfigError, match="seq_len"):
        build_job(load_recipe(path, ["data.seq_len=4096"]), tmp_path / "run", log=quiet)


def test_the_pal_recipe_trains_on_the_prompt_lmstack_pal_sends():
    recipe = load_recipe(ROOT / "recipes" / "finetune_pal_lora.yaml")
    (pal,) = recipe.data.datasets
    question = "A shop sells 3 pens at $2 each. How much do they cost?"
    assert pal.prompt.format(question=question) == build_prompt(question, **FINETUNED_PROMPT)
    assert pal.task == "math_word" and pal.completion == "{program}"


def test_save_hf_refuses_unmerged_adapters_and_takes_merged_ones(tmp_path, base):
    from lmstack.errors import WeightsError
    from lmstack.finetune.lora import LoRAConfig, apply_lora, merge_lora
    from lmstack.weights.hf import save_hf

    model, tok = load_finetuned(base)
    apply_lora(model, LoRAConfig(r=2, targets="all-linear"))
    with pytest.raises(WeightsError, match="active LoRA adapters"):
        save_hf(model, tmp_path / "hf", tok)
    merge_lora(model)
    save_hf(model, tmp_path / "hf", tok)  # merged: the base weights now hold the adapters
    assert (tmp_path / "hf" / "config.json").is_file()


def test_prompt_tuning_run_saves_the_virtual_tokens_and_loads_back(tmp_path, base):
    from lmstack.finetune.prompt_tuning import PromptTuned

    path = write_recipe(tmp_path, base, method="prompt_tuning", lr=5e-2, weight_decay=0.0)
    run_recipe(path, ["prompt_tuning.n_tokens=4", "prompt_tuning.init=sample_vocab"], log=quiet)
    ckpt = latest_good_checkpoint(tmp_path / "run")
    assert is_filtered_checkpoint(ckpt) and (ckpt / "prompt" / "adapter_config.json").is_file()
    model, tok = load_finetuned(tmp_path / "run")
    assert isinstance(model, PromptTuned) and model.n_tokens == 4
    plain, _ = load_finetuned(base)
    ids = torch.tensor([tok.encode("what is two plus three ?")])
    torch.testing.assert_close(logits_of(model.base, ids), logits_of(plain, ids), rtol=0, atol=0)  # base frozen
    assert not torch.equal(logits_of(model, ids), logits_of(plain, ids))
    losses = [r["loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert losses[-1] < losses[0]
