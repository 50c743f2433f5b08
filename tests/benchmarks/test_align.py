import pytest
from benchmarks.align import (
    DPO_RECIPE,
    QUICK,
    RM_RECIPE,
    goal_lines,
    held_out_rows,
    logged_pair_metrics,
    render,
    scores_summary,
    win_rate,
)

from lmstack.align.recipe import load_recipe
from lmstack.data.tasks import generate


def reward_part(accuracy: float) -> dict:
    return {
        "recipe": "recipes/align_reward_model.yaml",
        "run_dir": "runs/bench/align/reward_model",
        "run": {"steps": 200, "train_wall_s": 1500.0},
        "recipe_val": {"first": {"step": 0, "accuracy": 0.5}, "last": {"step": 200, "accuracy": 0.95}},
        "held_out": {"split": "test", "n": 200, "accuracy": accuracy, "margin": 2.5, "chosen": 1.2, "rejected": -1.3},
        "wall_s": 1600.0,
    }


def dpo_part() -> dict:
    return {
        "recipe": "recipes/align_dpo.yaml",
        "run_dir": "runs/bench/align/dpo",
        "run": {"steps": 150, "train_wall_s": 1400.0},
        "held_out": {
            "n": 200,
            "beta": 0.1,
            "accuracy": 0.8,
            "margin": 0.512,
            "chosen_logp_drift": -1.5,
            "rejected_logp_drift": -6.25,
        },
        "generation": {
            "n": 100,
            "max_new_tokens": 96,
            "wins": 40,
            "ties": 45,
            "losses": 15,
            "win_rate": 0.625,
            "dpo": {"mean": 1.1, "correct": 0.7},
            "start": {"mean": 0.9, "correct": 0.6},
        },
        "wall_s": 1700.0,
        "conditions": "alone on the machine",
    }


def step_part(speedup: float) -> dict:
    return {
        "pairs": 8,
        "response_tokens": 700,
        "trl_input": [16, 120],
        "device": "cpu",
        "repeats": 5,
        "lmstack_s": 1.0,
        "trl_s": round(speedup, 3),
        "trl_ref_forward_s": 1.6,
        "speedup": speedup,
        "first_loss_lmstack": 0.693147,
        "first_loss_trl": 0.693147,
        "ref_logp_max_abs_diff": 0.0001,
        "trainable_lmstack": 4884480,
        "trainable_trl": 4884480,
        "wall_s": 60.0,
    }


def test_win_rate_counts_a_tie_as_half_a_win() -> None:
    out = win_rate([1.5, 1.0, 0.5, 0.0], [1.0, 1.0, 1.5, 0.0])
    assert (out["wins"], out["ties"], out["losses"], out["n"]) == (1, 2, 1, 4)
    assert out["win_rate"] == pytest.approx(0.5)
    assert win_rate([1.0, 1.0], [0.0, 0.5])["win_rate"] == 1.0
    with pytest.raises(ValueError):
        win_rate([1.0], [1.0, 0.0])
    with pytest.raises(ValueError):
        win_rate([], [])


def test_scores_summary_counts_a_right_answer_from_score_one() -> None:
    out = scores_summary([1.5, 1.0, 0.5, 0.0])
    assert out == {"mean": pytest.approx(0.75), "correct": 0.5}


def test_logged_pair_metrics_keeps_the_first_and_last_records_of_the_prefix() -> None:
    records = [
        {"step": 0, "reward/accuracy": 0.5, "reward/margin": 0.0},
        {"step": 5, "loss": 0.7},
        {"step": 50, "val_loss": 0.6, "dpo/accuracy": 0.1},
        {"step": 100, "reward/accuracy": 0.9, "reward/margin": 2.0},
    ]
    out = logged_pair_metrics(records, "reward")
    assert out["first"] == {"step": 0, "accuracy": 0.5, "margin": 0.0}
    assert out["last"] == {"step": 100, "accuracy": 0.9, "margin": 2.0}
    assert logged_pair_metrics([{"step": 1, "loss": 1.0}], "reward") == {}


def test_goals_are_judged_at_their_thresholds_and_missing_parts_are_named() -> None:
    text = "\n".join(goal_lines({"reward_model": reward_part(0.9), "dpo_step": step_part(0.8)}))
    assert "held-out pair accuracy: 90.0% (≥ 90%: met)" in text
    assert "0.8× (≥ 1.0×: **missed**)" in text
    assert "Not run: (e) DPO." in text and "PPO, ReST and GRPO" in text
    text = "\n".join(goal_lines({"reward_model": reward_part(0.895), "dpo_step": step_part(1.0)}))
    assert "89.5% (≥ 90%: **missed**)" in text and "1.0× (≥ 1.0×: met)" in text
    text = "\n".join(goal_lines({}))
    assert "the reward_model part was not run" in text and "the dpo_step part was not run" in text


def test_the_page_has_one_row_per_measurement_and_the_part_wall_time_once() -> None:
    data = {"parts": {"reward_model": reward_part(0.93), "dpo": dpo_part(), "dpo_step": step_part(1.25)}}
    table, notes = render(data)
    lines = table.splitlines()
    assert len(lines) == 2 + 1 + 3 + 1 and all(line.count("|") == 6 for line in lines)
    assert "| (a) reward model: held-out pair accuracy | 93.0% of 200 (margin +2.50) | ≥ 90% | met | 1600.0 |" in table
    assert "| 62.5% (40 won / 45 tied / 15 lost of 100) | — | — |  |" in table
    assert "-1.50 / -6.25 nats" in table and "| 1.25× (1.0 s vs 1.25 s) | ≥ 1.0× | met | 60.0 |" in table
    assert "50.0% before training, 95.0% at step 200" in notes
    assert "**1.25×**" in notes and "right answer 70% vs 60%" in notes
    assert "- (e) DPO: alone on the machine" in notes
    assert "Not run" not in notes


def test_held_out_rows_are_the_test_split_none_of_the_recipes_trains_or_validates_on() -> None:
    recipe = load_recipe(DPO_RECIPE, QUICK)
    rows = held_out_rows(recipe, 30)
    assert len(rows) == 30 and all(origin.startswith("preferences/test#") for origin, _ in rows)
    held = {row["prompt"] for _, row in rows}
    for split in ("train", "validation"):
        seen = {r["prompt"] for r in generate("preferences", 60, recipe.data.seed, split)["items"]}
        assert not held & seen


@pytest.mark.parametrize("path", [RM_RECIPE, DPO_RECIPE])
def test_the_recipes_validate_with_the_smoke_run_overrides(path) -> None:
    recipe = load_recipe(path, ["out_dir=unused", "train.progress=false", *QUICK])
    assert recipe.train.steps == 2 and recipe.data.task == "preferences" and recipe.lora is not None
    assert recipe.lora.r == 8 and recipe.lora.targets == "all-linear"
