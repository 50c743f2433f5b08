import json
import re
from collections import Counter

from lmstack.data.tasks import records, reviews
from lmstack.data.tasks.common import SPLITS


def _label_from_text(text: str, split: str) -> str:
    """An independent reader of the review text: adjective polarity, flipped by the split's negation templates."""
    negations = [
        re.compile("^" + re.escape(t).replace(r"\{aspect\}", ".+").replace(r"\{adj\}", ".+") + "$")
        for t in reviews.TEMPLATES.table["judge_not"][SPLITS.index(split)]
    ]
    adjectives = sorted(reviews.POSITIVE + reviews.NEGATIVE, key=len, reverse=True)
    votes = []
    for sentence in re.split(r"(?<=[.:])\s+", text)[1:]:
        adj = next(a for a in adjectives if re.search(rf"\b{re.escape(a)}\b", sentence))
        negated = any(p.match(sentence) for p in negations)
        votes.append((adj in reviews.POSITIVE) != negated)
    return "positive" if all(votes) else "negative" if not any(votes) else "mixed"


def test_review_labels_follow_from_the_text(task_data):
    for split in SPLITS:
        for it in task_data("reviews")[split]["items"]:
            assert _label_from_text(it["text"], split) == it["label"], it["text"]
            assert it["completion"] == it["label"] and it["label"] in it["labels"]
            assert it["prompt"].startswith(reviews.INSTRUCTION) and it["text"] in it["prompt"]


def test_review_labels_are_balanced_and_negation_matters(task_data):
    items = [it for s in SPLITS for it in task_data("reviews")[s]["items"]]
    counts = Counter(it["label"] for it in items)
    assert all(0.25 < counts[label] / len(items) < 0.42 for label in reviews.LABELS)

    # A bag-of-adjectives reader that ignores negation is clearly worse than the real rule.
    def naive(text):
        pos = sum(bool(re.search(rf"\b{a}\b", text)) for a in reviews.POSITIVE)
        neg = sum(bool(re.search(rf"\b{a}\b", text)) for a in reviews.NEGATIVE)
        return "positive" if neg == 0 else "negative" if pos == 0 else "mixed"

    assert sum(naive(it["text"]) == it["label"] for it in items) / len(items) < 0.8


def test_record_targets_are_exactly_recoverable_from_the_text(task_data):
    months = records._MONTHS
    for split in SPLITS:
        for it in task_data("records")[split]["items"]:
            fields, text = it["fields"], it["text"]
            assert list(fields) == list(records.FIELDS)
            assert json.loads(it["completion"]) == fields
            assert records.field_accuracy(it["completion"], fields) == 1.0
            for key in ("order_id", "customer", "city"):
                assert fields[key] in text
            assert re.search(rf"\b{fields['quantity']} crates", text)
            assert re.search(rf"\b{records.format_number(fields['weight_kg'])} kg", text)
            y, m, d = (int(x) for x in fields["date"].split("-"))
            written = [fields["date"], f"{d} {months[m - 1]} {y}", f"{months[m - 1]} {d}, {y}"]
            assert any(w in text for w in written), text


def test_field_accuracy_scores_partial_and_broken_predictions():
    gold = {"order_id": "QX-1", "customer": "A", "city": "B", "date": "2020-01-02", "quantity": 3, "weight_kg": 1.5}
    assert records.field_accuracy(dict(gold), gold) == 1.0
    assert records.field_accuracy({**gold, "city": "C", "weight_kg": 1.4}, gold) == 4 / 6
    assert records.field_accuracy({**gold, "weight_kg": True}, gold) == 5 / 6
    assert records.field_accuracy("{not json", gold) == 0.0
    assert records.field_accuracy("[1, 2]", gold) == 0.0
