import ast
import re
from collections import Counter

import pytest

from lmstack.data.tasks import math_word
from lmstack.data.tasks.answers import FINAL_ANSWER_PREFIX, extract_answer, format_number, is_correct
from lmstack.data.tasks.common import SPLITS, numbers_in

VARIANTS = ["math_word", "math_word_hard"]


def _items(task_data, name):
    return [it for split in SPLITS for it in task_data(name)[split]["items"]]


def _run(program: str) -> object:
    namespace: dict = {}
    exec(compile(program, "<reference program>", "exec"), namespace)  # our own generated code
    return namespace["solution"]()


@pytest.mark.parametrize("name", VARIANTS)
def test_every_reference_program_computes_the_stored_answer(task_data, name):
    for it in _items(task_data, name):
        assert is_correct(_run(it["program"]), it["answer"]), (it["question"], it["program"])


@pytest.mark.parametrize("name", VARIANTS)
def test_programs_are_plain_pal_functions(task_data, name):
    for it in _items(task_data, name):
        tree = ast.parse(it["program"])
        assert len(tree.body) == 1 and isinstance(tree.body[0], ast.FunctionDef)
        fn = tree.body[0]
        assert fn.name == "solution" and not fn.args.args
        assert ast.unparse(fn.body[-1]) == "return result"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert [a.name for a in node.names] == ["math"]
            assert not isinstance(node, ast.ImportFrom | ast.Attribute) or ast.unparse(node).startswith("math.")
        names = [t.id for node in fn.body if isinstance(node, ast.Assign) for t in node.targets]
        assert all(len(n) >= 4 for n in names), names  # meaningful names, not a/b/x


@pytest.mark.parametrize("name", VARIANTS)
def test_difficulty_is_counted_from_the_program(task_data, name):
    items = _items(task_data, name)
    for it in items:
        assert it["n_ops"] == math_word.count_ops(it["program"])
        assert 2 <= it["n_ops"] <= 6
        expected = "easy" if it["n_ops"] <= 3 else "medium" if it["n_ops"] == 4 else "hard"
        assert it["difficulty"] == expected
    assert set(Counter(it["n_ops"] for it in items)) == {2, 3, 4, 5, 6}
    families = set(math_word.LARGE_FAMILIES if name.endswith("hard") else math_word.FAMILIES)
    assert {it["family"] for it in items} == families


_STEP = re.compile(r"((?:\d[\d.]*\s*[-+*/]\s*)+\d[\d.]*)\s*=\s*(about\s+)?\$?(\d[\d.]*)")


@pytest.mark.parametrize("name", VARIANTS)
def test_rationales_compute_correctly_and_end_in_the_answer(task_data, name):
    for it in _items(task_data, name):
        lines = it["rationale"].split("\n")
        assert lines[-1] == f"{FINAL_ANSWER_PREFIX} {format_number(it['answer'])}."
        assert is_correct(extract_answer(it["rationale"]), it["answer"])
        assert it["completion"] == it["rationale"] and it["prompt"] == it["question"]
        assert it["messages"][1]["content"] == it["rationale"]
        for line in lines[:-1]:
            match = _STEP.search(line)
            assert match, line
            lhs, about, rhs = match.groups()
            value, shown = eval(lhs, {"__builtins__": {}}), float(rhs.rstrip("."))
            assert abs(value - shown) <= 0.005 + 1e-9 if about else is_correct(value, shown), line


def test_hard_variant_uses_large_numbers_and_normal_does_not(task_data):
    for it in _items(task_data, "math_word_hard"):
        digits = [len(n.split(".")[0]) for n in numbers_in(it["question"])]
        assert 5 <= max(digits) <= 9, it["question"]
        assert it["numbers"] == "large"
    for it in _items(task_data, "math_word"):
        assert all(float(n) < 10_000 for n in numbers_in(it["question"])), it["question"]
        assert it["numbers"] == "small"


def test_pools_do_not_overlap():
    everything = [x for pool in math_word.POOLS.values() for x in pool]
    assert len(everything) == len(set(everything))
    assert all(len(pool) >= 15 for pool in math_word.POOLS.values())  # at least 3 per held-out split


def test_question_sentences_come_only_from_the_split_templates(task_data):
    """Mask numbers, entities and pronouns: every question sentence must be a template of its own split."""

    def mask_template(t: str) -> str:
        return re.sub(r"\{\w+\}", "@", t).replace("@self", "@").lower()

    for split in SPLITS:
        own = {mask_template(t) for t in math_word.TEMPLATES.by_split()[split]}
        for it in task_data("math_word")[split]["items"]:
            text = it["question"]
            for entity in sorted(it["entities"], key=len, reverse=True):
                text = re.sub(rf"\b{re.escape(entity)}\b", "@", text, flags=re.I)
            text = re.sub(r"\d+:\d\d|\$?\d+(?:\.\d+)?", "@", text)
            text = re.sub(r"\b(she|he|her|him|his|herself|himself)\b", "@", text, flags=re.I)
            for sentence in re.split(r"(?<=[.?])\s+(?=[A-Z@])", text):
                assert sentence.lower() in own, (split, sentence)
