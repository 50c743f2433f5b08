"""ReST / ReST-EM data side: threshold filtering, the rising threshold schedule, ReST-EM's per-prompt cap and
dedupe, fine-tuning rows the finetune loader accepts, atomic writes, and choosing the best iteration."""

import json

import pytest

from lmstack.align.rest import (
    PromptSamples,
    ThresholdSchedule,
    best_iteration,
    filter_samples,
    finetune_rows,
    improve_samples,
    rest_em_select,
    score_groups,
    write_rows,
)
from lmstack.align.rewards import GuardedReward
from lmstack.data.instruct import read_rows, row_content
from lmstack.errors import ConfigError, DataError

GROUPS = [
    PromptSamples("2+2?", ["4", "5", "4 ", "four", "4"], [1.0, 0.0, 1.0, 0.8, 1.0], {"answer": 4, "id": "a"}),
    PromptSamples("3+3?", ["6", "7", "six"], [1.0, 0.3, 0.9], {"answer": 6}),
    PromptSamples("9*9?", ["80", "82"], [0.0, 0.0], {"answer": 81}),
]


def test_filter_keeps_samples_strictly_above_the_threshold():
    picked = filter_samples(GROUPS, 0.8)
    assert [(s.prompt, s.completion) for s in picked] == [
        ("2+2?", "4"),
        ("2+2?", "4 "),
        ("2+2?", "4"),
        ("3+3?", "6"),
        ("3+3?", "six"),
    ]
    assert len(filter_samples(GROUPS, -1.0)) == 10 and filter_samples(GROUPS, 1.0) == []
    assert picked[0].row["id"] == "a" and picked[0].reward == 1.0


def test_threshold_schedule_rises_from_list_or_linearly():
    listed = ThresholdSchedule(values=(0.0, 0.5, 0.9))
    assert [listed(i) for i in range(5)] == [0.0, 0.5, 0.9, 0.9, 0.9]  # the last one repeats
    linear = ThresholdSchedule(start=0.2, end=0.8, steps=4)
    assert [linear(i) for i in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 0.8])
    assert ThresholdSchedule(start=0.3, end=0.7, steps=1)(0) == 0.7
    assert len(improve_samples(GROUPS, 0, listed)) == 7 and len(improve_samples(GROUPS, 2, listed)) == 4
    for bad in (
        dict(values=(0.5, 0.2)),
        dict(start=0.9, end=0.1, steps=3),
        dict(steps=0),
        dict(values=(float("nan"),)),
    ):
        with pytest.raises(ConfigError):
            ThresholdSchedule(**bad)
    with pytest.raises(ConfigError):
        linear(-1)


def test_rest_em_keeps_at_most_c_distinct_correct_samples_per_prompt():
    one = rest_em_select(GROUPS, max_per_prompt=1)
    assert [(s.prompt, s.completion) for s in one] == [("2+2?", "4"), ("3+3?", "6")]
    # "4", "4 " and "4" are one sample (whitespace aside); 0.8 and 0.9 are not correct
    two = rest_em_select(GROUPS, max_per_prompt=2)
    assert [(s.prompt, s.completion) for s in two] == [("2+2?", "4"), ("3+3?", "6")]
    loose = rest_em_select(GROUPS, max_per_prompt=2, correct=0.8)
    assert [(s.prompt, s.completion) for s in loose] == [
        ("2+2?", "4"),
        ("2+2?", "four"),
        ("3+3?", "6"),
        ("3+3?", "six"),
    ]
    many = [PromptSamples("q", [f"s{i}" for i in range(10)], [1.0] * 10)]
    choices = {seed: [s.completion for s in rest_em_select(many, 3, seed=seed)] for seed in range(5)}
    assert all(len(set(c)) == 3 and c == sorted(c) for c in choices.values())  # distinct, in sample order
    assert choices[0] == [s.completion for s in rest_em_select(many, 3, seed=0)]  # seeded: reproducible
    assert len({tuple(c) for c in choices.values()}) > 1  # a random choice, not always the first three
    with pytest.raises(ConfigError):
        rest_em_select(GROUPS, 0)


def test_rows_are_what_the_finetune_loader_reads_and_are_written_atomically(tmp_path):
    selected = rest_em_select(GROUPS, 2, correct=0.8) + filter_samples([PromptSamples("p", ["  "], [1.0])], 0.0)
    rows = finetune_rows(selected)
    assert len(rows) == 4  # the blank completion is left out
    assert rows[0] == {"prompt": "2+2?", "completion": "4", "reward": 1.0, "answer": 4}
    path = tmp_path / "iter-1" / "train.jsonl"
    assert write_rows(path, rows) == 4
    back = [row for _, row in read_rows(path)]
    assert back == rows and all(row_content(r, "plain") == (r["prompt"], r["completion"]) for r in back)
    assert [p.name for p in path.parent.iterdir()] == ["train.jsonl"]  # no temp file left behind
    with pytest.raises(DataError, match="no samples"):
        write_rows(tmp_path / "empty.jsonl", [])
    assert not (tmp_path / "empty.jsonl").exists()
    assert json.loads(path.read_text().splitlines()[-1])["completion"] == "six"


def test_best_iteration_by_validation_accuracy():
    assert best_iteration([0.2, 0.5, 0.4]) == 1
    assert best_iteration([0.3, 0.6, 0.6]) == 1  # ties: the earlier iteration
    assert best_iteration({3: 0.1, 1: 0.7, 2: 0.7}) == 1
    assert best_iteration([float("nan"), 0.1]) == 1
    with pytest.raises(DataError):
        best_iteration([float("nan")])


def test_grow_scores_every_sample_against_its_own_row():
    def exact(text, row):
        if text == "crash":
            raise RuntimeError("bad sample")
        return float(text == str(row["answer"]))

    groups = score_groups(
        ["2+2?", "3+3?"], [["4", "crash"], ["5", "6", "6"]], [{"answer": 4}, {"answer": 6}], GuardedReward(exact)
    )
    assert [g.rewards for g in groups] == [[1.0, 0.0], [0.0, 1.0, 1.0]]
    assert groups[1].row == {"answer": 6} and groups[0].completions == ["4", "crash"]
    with pytest.raises(DataError):
        score_groups(["a"], [["x"], ["y"]], [{}], exact)
    with pytest.raises(DataError):
        PromptSamples("q", ["a", "b"], [1.0])
