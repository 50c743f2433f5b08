from benchmarks.forgetting import render

from lmstack.train.recipe import load_recipe


def scored(a: float, b_exact: float = 0.5, b_fields: float = 0.8) -> dict:
    return {"score": {"a_accuracy": a, "b_exact": b_exact, "b_fields": b_fields, "n": 100, "wall_s": 1.0}}


def test_the_goal_compares_the_mixtures_loss_of_task_a_with_half_of_sequential_trainings() -> None:
    rows = {"start": scored(0.60, 0.0, 0.1), "sequential": scored(0.20), "mixture": scored(0.45), "lora": scored(0.5)}
    table, notes = render({"rows": rows})
    assert "| 60% | — |" in table and "| 20% | +40 |" in table and "| 45% | +15 |" in table
    assert "sequential lost 40 points, the mixture 15 — met" in notes
    _, notes = render({"rows": {**rows, "mixture": scored(0.35)}})
    assert "the mixture 25 — **missed**" in notes
    _, notes = render({"rows": {**rows, "sequential": scored(0.60)}})
    assert "not testable" in notes


def test_the_task_b_recipe_validates() -> None:
    recipe = load_recipe("recipes/finetune_records.yaml", ["train.steps=3"], default_kind="finetune")
    (records,) = recipe.data.datasets
    assert recipe.method == "full" and records.task == "records" and records.metric == "exact"
