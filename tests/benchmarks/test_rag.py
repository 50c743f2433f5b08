"""benchmarks/rag.py's scoring: the final answer must name the gold answer (a comparison must not also name the
other candidate, a computed difference is read after its `=`), and the goals are judged from the rows that ran."""

from benchmarks.rag import goal_lines, is_right

COMPARISON = {"type": "comparison", "answer": "Starut Academy", "aliases": [],
              "entities": ["Starut Academy", "Starut Press"]}  # fmt: skip
DIFFERENCE = {"type": "arithmetic", "answer": "23", "aliases": [], "entities": [], "operation": "subtract"}


def test_a_comparison_is_right_only_when_it_names_one_candidate() -> None:
    assert is_right(COMPARISON, "Starut Academy: founded in 1970 [1].\nAnswer: Starut Academy")
    assert not is_right(COMPARISON, "Starut Academy or Starut Press")
    assert not is_right(COMPARISON, "Starut Academy: founded in 1970 [1].\nAnswer: Starut Press")


def test_the_final_answer_line_and_the_result_of_a_subtraction_are_what_count() -> None:
    assert is_right(DIFFERENCE, "A: held in 2013 [1]. B: held in 1990 [2].\nAnswer: 2013 - 1990 = 23")
    assert not is_right(DIFFERENCE, "Answer: 2023 - 2000 = 32")  # 23 appears nowhere after the '='
    assert not is_right(DIFFERENCE, "The gap is 23 years? No.\nAnswer: 24")
    single = {"type": "single_hop", "answer": "geologist", "aliases": ["a geologist"], "entities": []}
    assert is_right(single, "Drobeth Fokend is a geologist.") and not is_right(single, "a geology teacher")


def test_goals_are_judged_from_the_rows_that_ran() -> None:
    rows = {"closed_book": {"accuracy": 0.05}, "rag_adapter": {"accuracy": 0.79}}
    text = "\n".join(goal_lines({"rows": rows}))
    assert "closed book 5.0% (≤ 10%: met)" in text
    assert "79.0% (≥ 80%: **missed**)" in text and "bare model" not in text
