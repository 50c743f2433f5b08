"""`lmstack align` recipes on a tiny random-init model: a reward model and DPO through the one training loop
(task data and JSONL files, LoRA and full), ReST-EM and ReST iterations (selection, fine-tunes from the base
or continuing, the best iteration, resume at iteration granularity), the shipped recipes, and malformed
recipes that fail before any model loads."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from align.align_helpers import assert_same_tensors, final_tensors, save_base, without_timings, write_recipe
from lmstack.align.recipe import load_recipe, recipe_from_dict
from lmstack.align.rest import best_iteration
from lmstack.align.reward import encode_pairs, score_pairs
from lmstack.align.rollouts import load_policy, reward_model_of
from lmstack.augment.pal import FINETUNED_PROMPT, build_prompt
from lmstack.cli import main
from lmstack.data.instruct import InstructFormat, read_rows
from lmstack.data.tasks import generate
from lmstack.errors import ConfigError
from lmstack.finetune.load import load_finetuned, shipped_adapter
from lmstack.train.metrics import read_metrics
from lmstack.weights.checkpoint import list_checkpoints

ROOT = Path(__file__).resolve().parents[2]
DROP = object()  # a key to leave out of a recipe
NOT_DPO = {"prompts": DROP, "reward": DROP, "grpo": DROP}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_base(tmp_path_factory.mktemp("base"))


def write_pairs(path: Path, n: int, split: str) -> Path:
    rows = generate("preferences", n, 0, split)["items"]
    path.write_text("".join(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------- reward model and DPO


def test_a_lora_reward_model_on_a_lora_fine_tuning_run_trains_on_the_task_and_scores_after_loading(tmp_path, base):
    sft = write_recipe(tmp_path / "sft", "dpo", base, train={"steps": 2, "eval_every": 0})
    assert main(["align", str(sft)]) == 0  # a LoRA run with finetune.json: what `lmstack finetune` writes too
    path = write_recipe(tmp_path, "reward_model", tmp_path / "sft" / "run")
    assert main(["align", str(path)]) == 0
    run = tmp_path / "run"
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    assert [r["step"] for r in records if "reward/accuracy" in r] == [0, 2, 3]
    assert [r["step"] for r in records if "val_loss" in r] == [0, 2, 3]
    # the base's adapter was merged once into run/base, which the reward model's adapter names as its base
    merged, tok = load_policy(run / "base")
    sft_policy, _ = load_finetuned(tmp_path / "sft" / "run")
    ids = torch.tensor([tok.encode("Convert 3 hours to minutes.")])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids), sft_policy(ids), rtol=0, atol=1e-5)
        assert not torch.allclose(merged(ids), load_finetuned(base)[0](ids))  # the run's adapter is in it
    rm, tok = reward_model_of(run)
    rows = generate("preferences", 2, 0, "validation")["items"]
    pairs = encode_pairs([(str(i), r) for i, r in enumerate(rows)], tok, InstructFormat(max_len=256))
    chosen, rejected = score_pairs(rm, pairs)
    assert torch.isfinite(chosen).all() and not torch.equal(chosen, rejected)


def test_full_dpo_from_jsonl_files_resumes_exactly_and_loads_as_a_policy(tmp_path, base):
    data = {"task": "", "path": str(write_pairs(tmp_path / "train.jsonl", 8, "train")),
            "val_path": str(write_pairs(tmp_path / "val.jsonl", 4, "validation"))}  # fmt: skip
    straight = write_recipe(tmp_path / "a", "dpo", base, lora=None, data=data)
    assert main(["align", str(straight)]) == 0
    killed = write_recipe(tmp_path / "b", "dpo", base, lora=None, data=data)
    assert main(["align", str(killed)]) == 0
    run = tmp_path / "b" / "run"
    for later in list_checkpoints(run)[1:]:
        shutil.rmtree(later)
    assert main(["align", str(killed)]) == 0  # resumes from step 1 (the reference is recomputed from the base)
    assert_same_tensors(final_tensors(tmp_path / "a" / "run"), final_tensors(run))
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records if "dpo/accuracy" in r] == [0, 2, 3]
    policy, _ = load_finetuned(run)  # `lmstack generate --model RUN`
    plain, _ = load_finetuned(base)
    assert any(not torch.equal(p, q) for p, q in zip(policy.parameters(), plain.parameters()))


# ----------------------------------------------------------------------------- ReST and ReST-EM


def iteration_dirs(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "iterations").iterdir())


def initial_val_loss(finetune_run: Path) -> float:
    return next(r["val_loss"] for r in read_metrics(finetune_run / "metrics.jsonl") if "val_loss" in r)


def final_val_loss(finetune_run: Path) -> float:
    return [r["val_loss"] for r in read_metrics(finetune_run / "metrics.jsonl") if "val_loss" in r][-1]


def test_rest_em_selects_correct_samples_fine_tunes_from_the_base_and_picks_the_best_iteration(tmp_path, base):
    path = write_recipe(tmp_path, "rest_em", base, prompts={"reference": "{chosen}"}, rest={"max_per_prompt": 2})
    assert main(["align", str(path)]) == 0
    run = tmp_path / "run"
    assert iteration_dirs(run) == ["000", "001", "002"]
    for it in ("001", "002"):
        rows = [row for _, row in read_rows(run / "iterations" / it / "improve-0" / "train.jsonl")]
        assert rows and all(r["reward"] >= 0.5 and r["prompt"] and r["completion"] for r in rows)
        per_prompt = [sum(r["prompt"] == p for r in rows) for p in {r["prompt"] for r in rows}]
        assert max(per_prompt) <= 2  # at most c per prompt
        grow = [json.loads(line) for line in (run / "iterations" / it / "grow.jsonl").read_text().splitlines()]
        assert len(grow) == 4 and all(len(g["completions"]) == len(g["rewards"]) == 3 for g in grow)
    # every iteration starts from the base: the same validation rows give the same loss before training
    runs = [run / "iterations" / it / "improve-0" / "run" for it in ("001", "002")]
    assert initial_val_loss(runs[0]) == initial_val_loss(runs[1])
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2]
    assert all({"val_accuracy", "val_reward", "grow/reward", "grow/solved", "selected", "loss"} <= r.keys()
               for r in records[1:])  # fmt: skip
    summary = json.loads((run / "rest.json").read_text())
    accuracy = {int(k): v for k, v in summary["val_accuracy"].items()}
    assert summary["best_iteration"] == best_iteration(accuracy) and len(accuracy) == 3
    best = json.loads((run / "iterations" / f"{summary['best_iteration']:03d}" / "done.json").read_text())
    assert summary["best_policy"] == best["policy"]


def test_rest_resumes_a_killed_iteration_and_ends_where_a_straight_run_does(tmp_path, base):
    sections = {
        "prompts": {"reference": "{chosen}"},
        "rest": {"improve_steps": 2, "thresholds": {"values": [0.0, 0.4]}},
    }
    straight = write_recipe(tmp_path / "a", "rest", base, **sections)
    assert main(["align", str(straight)]) == 0
    killed = write_recipe(tmp_path / "b", "rest", base, **sections)
    assert main(["align", str(killed)]) == 0
    run = tmp_path / "b" / "run"
    second = run / "iterations" / "002"
    grow_mtime = (second / "grow.jsonl").stat().st_mtime_ns
    (second / "done.json").unlink()  # killed during iteration 2's last fine-tune, after its step-1 save:
    shutil.rmtree(second / "improve-1" / "run" / "step-00000003")
    shutil.rmtree(second / "improve-1" / "run" / "step-00000002")
    assert main(["align", str(killed)]) == 0
    assert (second / "grow.jsonl").stat().st_mtime_ns == grow_mtime  # its Grow samples were reused
    a_run = tmp_path / "a" / "run" / "iterations" / "002" / "improve-1" / "run"
    assert_same_tensors(final_tensors(a_run), final_tensors(second / "improve-1" / "run"))
    a = without_timings(read_metrics(tmp_path / "a" / "run" / "metrics.jsonl"))
    assert a == without_timings(read_metrics(run / "metrics.jsonl"))
    # ReST continues: each fine-tune starts from the model before it (the same validation rows give the same loss)
    steps = [run / "iterations" / it / f"improve-{k}" / "run" for it in ("001", "002") for k in (0, 1)]
    for before, after in zip(steps, steps[1:]):
        assert initial_val_loss(after) == final_val_loss(before)
    assert initial_val_loss(steps[0]) != initial_val_loss(steps[1])


def test_an_iteration_that_selects_nothing_keeps_the_previous_policy(tmp_path, base):
    path = write_recipe(tmp_path, "rest_em", base, prompts={"task": "math_word", "n": 3, "n_val": 2, "template":
                        "Q: {question}\n\n# solution in Python:\n\n"}, reward={"name": "execution"},
                        rl={"iterations": 1, "correct": 1.0, "max_new_tokens": 8})  # fmt: skip
    assert main(["align", str(path)]) == 0
    done = json.loads((tmp_path / "run" / "iterations" / "001" / "done.json").read_text())
    assert done["selected"] == 0 and done["checkpoint"] is None and done["policy"] == str(base)


# ----------------------------------------------------------------------------- recipes


def test_the_shipped_recipes_parse_and_start_from_the_pal_prompt_and_adapter(tmp_path):
    question = "A shop sells 3 pens at $2 each. How much do they cost?"
    methods = {}
    for path in sorted((ROOT / "recipes").glob("align_*.yaml")):
        if path.stem == "align_ppo_rm":  # PPO against a reward model, which has to be trained first
            recipe = load_recipe(path, [f"reward.model={tmp_path}"])
            assert recipe.method == "ppo" and recipe.prompts.task == "preferences" and not recipe.init_adapter
            assert (recipe.reward.name, recipe.reward.gold) == ("reward_model", "oracle")
            continue
        recipe = load_recipe(path)
        methods[recipe.method] = recipe
        assert path.stem == f"align_{recipe.method}"
    assert {"reward_model", "dpo", "ppo", "grpo", "rest_em"} <= methods.keys()
    for method in ("ppo", "grpo", "rest_em"):
        recipe = methods[method]
        assert recipe.init_adapter == "pal" and shipped_adapter("pal").is_dir()
        assert recipe.prompts.task == "math_word" and recipe.reward.name == "execution"
        assert recipe.prompts.template.format(question=question) == build_prompt(question, **FINETUNED_PROMPT)
    assert methods["dpo"].data.task == methods["reward_model"].data.task == "preferences"


def test_malformed_recipes_name_the_key_before_any_model_loads(tmp_path, capsys):
    nowhere = str(tmp_path / "no-such-base")  # loading it would fail differently: nothing may load
    good = {"name": "x", "method": "grpo", "base": nowhere, "out_dir": str(tmp_path / "run"),
            "prompts": {"task": "preferences", "n": 4, "n_val": 2}, "reward": {"name": "oracle"},
            "grpo": {"group_size": 2}}  # fmt: skip
    recipe_from_dict(good)
    bad = [
        ({"method": "sft"}, "method: 'sft' is not allowed"),
        ({"rl": {"iteratons": 3}}, r"rl\.iteratons: unknown key"),
        ({"train": {"steps": 3}}, "train: method grpo does not use this section"),
        ({"prompts": {}}, "prompts: give either path"),
        ({"prompts": {"task": "nope"}}, r"prompts\.task: unknown task 'nope'"),
        ({"prompts": {"task": "", "path": str(tmp_path / "missing.jsonl")}}, r"prompts\.path: file not found"),
        ({"prompts": {"task": "preferences", "n_val": 0}}, "prompts: grpo validates greedily"),
        ({"reward": {"name": ""}}, r"reward\.name: required"),
        ({"reward": {"name": "no_such_module:fn"}}, r"reward\.name: reward 'no_such_module:fn': cannot import"),
        ({"reward": {"name": "reward_model"}}, r"reward\.model: the reward model's run"),
        ({"reward": {"name": "oracle", "gold": "nope"}}, r"reward\.gold: unknown reward 'nope'"),
        ({"reward": {"name": "oracle", "gold": "reward_model"}}, r"reward\.gold: a gold reward is a fixed judge"),
        ({"method": "rest_em", "grpo": DROP, "reward": {"name": "oracle", "gold": "oracle"}}, "gold: method rest_em"),
        ({"lora": None}, "lora: method grpo trains a LoRA adapter"),
        ({"rl": {"temperature": 0.7}}, r"rl\.temperature: grpo samples at temperature 1"),
        ({"rl": {"kl_coef": 0.1}}, r"rl\.kl_coef: method grpo does not use it \(its KL weight is grpo\.beta\)"),
        ({"method": "rest_em", "grpo": DROP, "rl": {"lr": 0.1}}, r"rl\.lr: method rest_em does not use it"),
        ({"grpo": {"beta": 0.1}}, r"grpo\.group_size: required key is missing"),
        ({"init_adapter": "nope"}, "init_adapter: 'nope' is neither a shipped adapter"),
        ({"method": "dpo", **NOT_DPO}, "data: give either path"),
        ({"method": "dpo", **NOT_DPO, "data": {"task": "preferences"}, "dpo": {"lora": {"r": 2}}}, r"dpo\.lora / "),
    ]
    for change, message in bad:
        data = {k: v for k, v in {**good, **change}.items() if v is not DROP}
        with pytest.raises(ConfigError, match=message):
            recipe_from_dict(data)
    # through the command: exit status 2 and the key in the message, from a file plus overrides
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(good))
    assert main(["align", str(path), "prompts.template='{nope}'"]) == 2
    assert "prompts.template: '{nope}' cannot be filled from preferences/train#0" in capsys.readouterr().err
    assert main(["align", str(path), "prompts.task=math_word", "reward.name=oracle"]) == 2
    assert "reward.name: oracle scores against the row's 'constraint'; math_word/train#0" in capsys.readouterr().err
    assert main(["align", str(path), "prompts.task=math_word", "reward.name=execution", "reward.gold=oracle"]) == 2
    assert "reward.gold: oracle scores against the row's 'constraint'; math_word/train#0" in capsys.readouterr().err
    assert main(["align", str(path), "kind=finetune"]) == 2
    assert "kind: 'finetune' is not allowed" in capsys.readouterr().err
    bad_rows = tmp_path / "bad.jsonl"
    bad_rows.write_text(json.dumps({"prompt": "2+2?", "rejected": "5"}) + "\n")
    dpo = {**{k: v for k, v in good.items() if k not in NOT_DPO}, "method": "dpo", "data": {"path": str(bad_rows)}}
    path.write_text(json.dumps(dpo))
    assert main(["align", str(path)]) == 2
    assert "bad.jsonl:1: has no 'chosen'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # rows are checked before the run directory is made
