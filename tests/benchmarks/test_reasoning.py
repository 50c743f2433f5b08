"""benchmarks/reasoning.py: direct answers are CoT's shots without their reasoning, the ReAct goal is judged
from the two rows it compares, and the page shows the rows that ran."""

from benchmarks.reasoning import K, direct_examples, goal_lines, render
from lmstack.augment.cot import COT_EXAMPLES
from lmstack.data.tasks.answers import extract_answer


def test_direct_examples_keep_each_question_and_only_its_answer_line() -> None:
    shots = direct_examples()
    assert [q for q, _ in shots] == [q for q, _ in COT_EXAMPLES]
    for (_, answer), (_, rationale) in zip(shots, COT_EXAMPLES):
        assert "\n" not in answer and answer.startswith("The answer is")
        assert extract_answer(answer) == extract_answer(rationale)


def test_the_react_goal_needs_both_rows_and_fifteen_points() -> None:
    assert goal_lines({"multihop": {"react_adapter": {"accuracy": 0.5}}}) == []
    met = {"react_adapter": {"accuracy": 0.40}, "rag_adapter_nosearch": {"accuracy": 0.25}}
    assert "+15.0 points (met)" in goal_lines({"multihop": met})[0]
    missed = {"react_adapter": {"accuracy": 0.39}, "rag_adapter_nosearch": {"accuracy": 0.25}}
    assert "**missed**" in goal_lines({"multihop": missed})[0]


def test_the_page_shows_the_rows_that_ran() -> None:
    split = {"n": 50, "accuracy": 0.62, "no_answer": 3, "wall_s": 10.0}
    hop = {"n": 33, "accuracy": 0.4, "hops": {"2": 0.5, "3": 0.25}, "wall_s": 5.0, "adapter": "a"}
    data = {"math": {"pal_vote": {"math_word": split, "math_word_hard": split}}, "multihop": {"react_adapter": hop}}
    table, notes = render(data)
    assert f"PAL + vote (k={K}), bare, 4-shot | **62%** | **62%** | 3 | 3 | 20.0" in table
    assert "2 hops 50%, 3 hops 25%" in table and "(33)" in table
    assert "react_adapter `a`" in notes and "CoT, bare" not in table
