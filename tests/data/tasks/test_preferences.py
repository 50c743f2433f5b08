from collections import Counter

import pytest

from lmstack.data.tasks import preferences as pref
from lmstack.data.tasks.common import SPLITS


def _items(task_data, split=None):
    splits = [split] if split else SPLITS
    return [it for s in splits for it in task_data("preferences")[s]["items"]]


def test_oracle_prefers_chosen_and_reproduces_the_stored_scores(task_data):
    for it in _items(task_data):
        cs, rs = pref.oracle_score(it["chosen"], it), pref.oracle_score(it["rejected"], it)
        assert (cs, rs) == (it["chosen_score"], it["rejected_score"])
        assert cs > rs


@pytest.mark.parametrize("split", SPLITS)
def test_length_alone_cannot_predict_the_preference(task_data, split):
    items = _items(task_data, split)
    for measure in (len, lambda t: len(t.split())):
        longer_wins = sum(measure(it["chosen"]) > measure(it["rejected"]) for it in items) / len(items)
        shorter_wins = sum(measure(it["chosen"]) < measure(it["rejected"]) for it in items) / len(items)
        assert longer_wins <= 0.60 and shorter_wins <= 0.60, (longer_wins, shorter_wins)


def test_both_parts_of_the_rule_matter(task_data):
    items = _items(task_data)
    kinds = Counter(it["constraint"]["kind"] for it in items)
    assert set(kinds) == set(pref.CONSTRAINT_KINDS)
    pairs = Counter((it["chosen_score"], it["rejected_score"]) for it in items)
    assert set(pairs) == {(1.5, 1.0), (1.5, 0.5), (1.5, 0.0), (1.0, 0.5), (1.0, 0.0), (0.5, 0.0)}
    # Correctness alone is not enough: in (1.5 vs 1.0) pairs both answers are right.
    for it in items:
        if (it["chosen_score"], it["rejected_score"]) == (1.5, 1.0):
            assert pref.is_correct(pref.extract_answer(it["rejected"]), it["answer"])
            assert not pref.constraint_ok(it["rejected"], it["constraint"])


@pytest.mark.parametrize(
    "kind, value, good, bad",
    [
        ("lowercase", None, "the answer is 42.", "The answer is 42."),
        ("max_words", 4, "The answer is 42.", "I think the answer is 42."),
        ("min_words", 6, "Well, I think the answer is 42.", "The answer is 42."),
        ("starts_with", "Indeed", "Indeed, the answer is 42.", "The answer is 42, indeed"),
        ("ends_with", "Okay", "The answer is 42. Okay", "Okay. The answer is 42."),
        ("includes", "Splendid", "Splendid work: the answer is 42.", "The answer is 42, splendidly."),
    ],
)
def test_constraint_checks(kind, value, good, bad):
    constraint = {"kind": kind, "value": value}
    assert pref.constraint_ok(good, constraint)
    assert not pref.constraint_ok(bad, constraint)


def test_oracle_as_a_reward():
    item = {"answer": 1863, "constraint": {"kind": "max_words", "value": 6}}
    assert pref.oracle_score("The answer is 1863.", item) == 1.5
    assert pref.oracle_score("After some careful thought, the answer is 1863.", item) == 1.0
    assert pref.oracle_score("The answer is 1862.", item) == 1.5  # within PAL's 1e-3 tolerance
    assert pref.oracle_score("The answer is 1800.", item) == 0.5
    assert pref.oracle_score("", item) == 0.0
    with pytest.raises(pref.DataError, match="unknown constraint"):
        pref.oracle_score("x", {"answer": 1, "constraint": {"kind": "rhyme"}})
