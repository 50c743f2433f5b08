from benchmarks.finetune import datasets_override, goal_lines


def scored(test: float, hard: float, **extra) -> dict:
    return {"score": {"math_word": {"accuracy": test}, "math_word_hard": {"accuracy": hard}, "params": 100}, **extra}


def test_goals_are_judged_from_the_rows_that_ran_and_name_the_missing_ones() -> None:
    data = {
        "rows": {
            "lora8": scored(0.62, 0.45, run={"optimizer_state_mb": 0.01}, trainable_pct=1.8),
            "cot": scored(0.30, 0.10),
            "full": scored(0.65, 0.5, run={"optimizer_state_mb": 1.0}, trainable_pct=100.0),
            "lora4": scored(0.64, 0.5, trainable_pct=0.9),
            "lora8_120": scored(0.40, 0.40, trainable_pct=1.8),
        },
        "step": {"speedup": 1.1},
    }
    text = "\n".join(goal_lines(data))
    assert "62% test (≥ 50%: met), 45% hard (≥ 40%: met)" in text
    assert "(LoRA r=8, 120 steps): +10 points test (≥ +20: **missed**), +30 hard (≥ +40: **missed**)" in text
    assert "LoRA r=4, 120 steps (0.90%) is 1 points behind full on the test split (met)" in text
    closest = "LoRA r=8, 120 steps on 2,000 problems (the first shipped adapter) (1.80%)"
    assert f"the closest LoRA at any size, {closest}, is 25 test and 10 hard points behind" in text
    assert "1.1× (≥ 1.2×: **missed**)" in text
    assert "(measured) = 1.0% (≤ 2%: met)" in text
    assert "Not run:" in text and "prompt tuning" in text


def test_datasets_override_is_one_flow_style_dataset() -> None:
    line = datasets_override({"name": "pal", "n": 10, "prompt": 'Q: {question}\n"x"'})
    assert line == 'data.datasets=[{name: "pal", n: 10, prompt: "Q: {question}\\n\\"x\\""}]'


def test_datasets_override_holds_several_datasets() -> None:
    line = datasets_override({"task": "records", "n": 5}, {"name": "pal", "weight": 0.5})
    assert line == 'data.datasets=[{task: "records", n: 5}, {name: "pal", weight: 0.5}]'
