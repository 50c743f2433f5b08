import pytest
from benchmarks.align import (
    DPO_RECIPE,
    QUICK,
    RM_RECIPE,
    accuracy_by_kind,
    goal_lines,
    held_out_rows,
    logged_pair_metrics,
    render,
    scores_summary,
    win_rate,
)
from benchmarks.align_rl import (
    GRPO_RECIPE,
    KL_BOUND,
    PPO_RECIPE,
    QUICK_RL,
    REST_EM_RECIPE,
    REST_RECIPE,
    accuracy_at,
    chosen_point,
    cumulative,
    draw_plots,
    gain,
    ppo_curve,
    ppo_goal,
    quarter_means,
    sample_efficiency,
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
    assert "Not run: (b) PPO against the reward model; (c) ReST-EM;" in text and "(e) DPO;" in text
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
    missing = notes.split("Not run: ")[1]
    assert missing.startswith("(b) PPO") and "(a)" not in missing and "(e)" not in missing and "DPO step" not in missing


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


# ----------------------------------------------------------------------------- the sampling parts (b, c, d, f)


def curve(proxy: list, gold: list, kl: list) -> dict:
    return {"step": list(range(1, len(proxy) + 1)), "proxy": proxy, "gold": gold, "kl": kl}


def ppo_part(leashed: dict, free: dict) -> dict:
    run = {"recipe": "recipes/align_ppo_rm.yaml", "rollouts": 8, "max_new_tokens": 64, "iteration_s": 20.5}
    return {
        "reward_model": "runs/bench/align/reward_model",
        "runs": {
            "ppo": {**run, "run_dir": "runs/bench/align/ppo", "beta": 0.05, "curve": leashed},
            "ppo_beta0": {**run, "run_dir": "runs/bench/align/ppo_beta0", "beta": 0.0, "curve": free},
        },
        "goal": ppo_goal(leashed, free),
        "wall_s": 2000.0,
    }


HACKED = curve([0.0, 0.5, 1.0, 2.0], [0.8, 0.7, 0.5, 0.3], [0.0, 3.0, 9.0, 20.0])
LEASHED = curve([0.0, 0.3, 0.5, 0.6], [0.6, 0.7, 0.8, 0.9], [0.0, 1.0, 2.0, 2.5])


def point(iteration: int, samples: int, test: float, hard: float, val: float | None = 0.5) -> dict:
    return {
        "iteration": iteration,
        "samples": samples,
        "policy": f"runs/x/{iteration}",
        "val_accuracy": val,
        "math_word": {"n": 100, "accuracy": test, "wall_s": 150.0},
        "math_word_hard": {"n": 100, "accuracy": hard, "wall_s": 180.0},
    }


def rest_part(method: str, points: list, best: int = 1) -> dict:
    return {
        "recipe": f"recipes/align_{method}.yaml",
        "run_dir": f"runs/bench/align/{method}",
        "train_wall_s": 2400.0,
        "method": method,
        "start": "smollm2 + pal",
        "points": points,
        "best_iteration": best,
        "sampling": "64 problems × 4 at T=0.7",
        "per_iteration": 256,
        "finetune_steps": 40,
        "wall_s": 3600.0,
    }


def grpo_part(points: list) -> dict:
    return {**rest_part("grpo", points), "sampling": "8 problems × 4 at T=1, β = 0.04", "iteration_s": 90.0}


def grpo_step_part(speedup: float) -> dict:
    return {
        "rows": 32,
        "group_size": 4,
        "minibatch": 8,
        "groups_with_spread": 5,
        "completion_tokens": 3000,
        "width": [60, 160],
        "beta": 0.04,
        "device": "cpu",
        "repeats": 5,
        "first_loss_lmstack": 0.0,
        "first_loss_trl": 0.0,
        "ref_logp_max_abs_diff": 0.0002,
        "lmstack_s": 2.0,
        "trl_s": round(2.0 * speedup, 3),
        "speedup": speedup,
        "trainable_lmstack": 4884480,
        "trainable_trl": 4884480,
        "wall_s": 120.0,
    }


REST_EM_POINTS = [point(0, 0, 0.62, 0.40), point(1, 256, 0.66, 0.42, 0.6), point(2, 512, 0.70, 0.45, 0.7),
                  point(3, 768, 0.69, 0.47, 0.7)]  # fmt: skip
GRPO_POINTS = [point(0, 0, 0.62, 0.40, None), point(10, 320, 0.64, 0.41, None), point(20, 640, 0.65, 0.43, None)]


def test_quarter_means_compare_the_first_and_last_quarter_of_a_curve() -> None:
    assert quarter_means([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]) == (1.5, 7.5)
    assert quarter_means([1.0, 3.0]) == (1.0, 3.0)  # at least one point each
    with pytest.raises(ValueError):
        quarter_means([])


def test_ppo_curve_reads_proxy_gold_and_kl_of_every_iteration() -> None:
    records = [
        {"step": 0, "val_accuracy": 0.1},  # a validation record, no rollout
        {"step": 1, "reward": 0.123456, "gold_reward": 0.5, "kl": 0.0, "rollout_s": 1.0},
        {"step": 2, "reward": -0.5, "gold_reward": 0.75, "kl": 1.23456},
        {"step": 3, "reward": 1.0, "kl": 2.0},  # a run without a gold reward logs none
    ]
    assert ppo_curve(records) == {"step": [1, 2], "proxy": [0.1235, -0.5], "gold": [0.5, 0.75], "kl": [0.0, 1.2346]}


def test_the_ppo_goal_needs_the_leash_to_hold_and_the_free_run_to_hack_the_proxy() -> None:
    assert ppo_goal(LEASHED, HACKED)["met"]
    g = ppo_goal(HACKED, HACKED)  # no leash effect: its gold falls and its KL runs off
    assert not g["met"] and not g["gold_rises"] and not g["kl_bounded"] and g["gold_falls"]
    honest = curve([0.0, 0.5, 1.0, 2.0], [0.6, 0.7, 0.8, 0.9], [0.0, 3.0, 9.0, 20.0])
    g = ppo_goal(LEASHED, honest)  # the proxy rises with the gold: no hacking shown
    assert g["proxy_rises"] and not g["gold_falls"] and not g["met"]
    assert ppo_goal(curve([0, 0], [0.5, 0.6], [KL_BOUND, KL_BOUND]), HACKED)["kl_bounded"]  # the bound is inclusive


def test_accuracy_at_interpolates_between_points_and_holds_past_the_last() -> None:
    c = [(0, 60.0), (100, 70.0), (300, 66.0)]
    assert accuracy_at(c, 0) == 60.0 and accuracy_at(c, 50) == 65.0 and accuracy_at(c, 200) == 68.0
    assert accuracy_at(c, 1000) == 66.0 and accuracy_at([(0, 1.0), (0, 2.0)], 0) == 1.0
    assert cumulative([256, 256, 0, 4]) == [256, 512, 512, 516]


def test_sample_efficiency_compares_the_gains_at_a_budget_both_sampled() -> None:
    e = sample_efficiency(rest_part("rest_em", REST_EM_POINTS), grpo_part(GRPO_POINTS))
    assert e["budget"] == 640 and e["winner"] == "ReST-EM"
    assert e["gain_rest_em"] == pytest.approx(70 - 62 + (69 - 70) * 128 / 256) and e["gain_grpo"] == pytest.approx(3)
    even = [point(0, 0, 0.62, 0.4), point(1, 640, 0.655, 0.4)]
    assert sample_efficiency(rest_part("rest_em", even), grpo_part(GRPO_POINTS))["winner"] == "neither"


def test_the_chosen_policy_is_picked_by_validation_or_is_grpos_last() -> None:
    rest = rest_part("rest_em", REST_EM_POINTS)
    assert chosen_point(rest)["iteration"] == 2  # iterations 2 and 3 tie on validation: the earlier one
    assert gain(rest) == pytest.approx(8) and gain(rest, "math_word_hard") == pytest.approx(5)
    late = REST_EM_POINTS + [point(4, 1024, 0.9, 0.9, 0.99)]  # past WITHIN iterations: not a candidate
    assert chosen_point(rest_part("rest_em", late))["iteration"] == 2
    assert chosen_point(grpo_part(GRPO_POINTS))["iteration"] == 20 and gain(grpo_part(GRPO_POINTS)) == pytest.approx(3)
    assert chosen_point(rest_part("rest", REST_EM_POINTS[:1]))["iteration"] == 0  # no iteration ran


def test_the_sampling_goals_are_judged_and_the_missing_ones_named() -> None:
    parts = {"ppo": ppo_part(LEASHED, HACKED), "rest_em": rest_part("rest_em", REST_EM_POINTS),
             "grpo": grpo_part(GRPO_POINTS), "grpo_step": grpo_step_part(0.9)}  # fmt: skip
    text = "\n".join(goal_lines(parts))
    assert "gold reward 0.60 → 0.90, KL 2.5 nats at the end" in text and "reward hacking shows: met" in text
    assert "- ReST-EM: +8 points test, +5 hard over SFT within 3 iterations (≥ +5: met)." in text
    assert "- GRPO: +3 points test, +3 hard over SFT (≥ +5: **missed**)." in text
    assert "More sample-efficient here: **ReST-EM** (test gain at 640 completions" in text
    assert "GRPO step vs TRL's GRPOTrainer: 0.9× (≥ 1.0×: **missed**)" in text
    assert "the rest part was not run" in text
    assert "Not run: (a) reward model; (c) ReST, threshold schedule; (e) DPO; (f) DPO step vs TRL." in text
    text = "\n".join(goal_lines({}))
    assert "the ppo part was not run" in text and "the grpo_step part was not run" in text
    assert "sample-efficient" not in text


def test_the_page_has_a_row_per_scored_policy_and_links_the_plots(tmp_path) -> None:
    parts = {"ppo": ppo_part(LEASHED, HACKED), "rest_em": rest_part("rest_em", REST_EM_POINTS),
             "grpo": grpo_part(GRPO_POINTS), "grpo_step": grpo_step_part(1.5)}  # fmt: skip
    table, notes = render({"parts": parts})
    lines = table.splitlines()
    assert len(lines) == 2 + 2 + (4 + 1) + (3 + 1) + 1 and all(line.count("|") == 6 for line in lines)
    assert (
        "| (b) PPO on the reward model, β = 0.05: first → last quarter | gold 0.60 → 0.90, KL 0.0 → 2.5 nats" in table
    )
    assert (
        "| (c) ReST-EM: iteration 2 (chosen), 512 completions sampled | 70.0% test / 45.0% hard | — | — |  |" in table
    )
    assert "| (c) ReST-EM: chosen policy − SFT, test / hard | +8 / +5 points | ≥ +5 points | met |  |" in table
    assert "| (d) GRPO: SFT start, 0 completions sampled | 62.0% test / 40.0% hard | — | — | 3600.0 |" in table
    assert "| (f) GRPO step: TRL's time / ours | 1.5× (2.0 s vs 3.0 s) | ≥ 1.0× | met | 120.0 |" in table
    assert "(align_ppo.png)" in notes and "(align_rl.png)" in notes and "rest.json's best: 1" in notes
    drawn = draw_plots(parts, tmp_path)
    assert [p.name for p in drawn] == ["align_ppo.png", "align_rl.png"] and all(p.stat().st_size for p in drawn)


@pytest.mark.parametrize("method", ["rest_em", "rest", "grpo"])
def test_the_pal_recipes_validate_with_the_smoke_run_overrides(method) -> None:
    path = {"rest_em": REST_EM_RECIPE, "rest": REST_RECIPE, "grpo": GRPO_RECIPE}[method]
    quick = QUICK_RL["grpo" if method == "grpo" else "rest"]
    recipe = load_recipe(path, ["out_dir=unused", "rl.progress=false", *quick])
    assert recipe.init_adapter == "pal" and recipe.prompts.task == "math_word" and recipe.rl.iterations <= 2


def test_the_ppo_recipe_scores_with_the_reward_model_and_logs_the_oracle(tmp_path) -> None:
    recipe = load_recipe(PPO_RECIPE, [f"reward.model={tmp_path}", "out_dir=unused", *QUICK_RL["ppo"]])
    assert (recipe.reward.name, recipe.reward.gold, recipe.prompts.task) == ("reward_model", "oracle", "preferences")
    assert recipe.rl.kl_coef > 0 and recipe.rl.iterations == 2


def test_reward_model_accuracy_is_split_by_what_decides_the_pair() -> None:
    rows = [
        {"chosen_score": 1.5, "rejected_score": 0.5},  # the answer decides (both satisfy the constraint)
        {"chosen_score": 1.0, "rejected_score": 0.5},  # the answer decides, the constraint points the other way
        {"chosen_score": 1.5, "rejected_score": 1.0},  # the constraint decides
        {"chosen_score": 0.5, "rejected_score": 0.0},  # the constraint decides
    ]
    out = accuracy_by_kind(rows, [2.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 1.0])
    assert out["answer"] == {"n": 2, "accuracy": 0.5}
    assert out["constraint"] == {"n": 2, "accuracy": 0.5}
    # a constraint checker that guesses answers: 0.5 + 0 + 1 + 1
    assert out["constraint_only_judge"] == 2.5 / 4
