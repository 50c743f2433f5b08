import filecmp
import json
from collections import Counter

import pytest

from lmstack.data.tasks import knowledge_base as kb
from lmstack.data.tasks import make
from lmstack.data.tasks.answers import contains_answer, normalize_text, parse_number
from lmstack.data.tasks.common import SPLITS, split_rng
from lmstack.errors import DataError


def _stem(name: str, entity_type: str) -> str:
    """The shared part of similar names: a person's family name, otherwise the first word."""
    return name.split()[-1] if entity_type == "person" else name.split()[0]


def _split(task_data, split):
    out = task_data("knowledge_base")[split]
    return out["items"], {d["id"]: d for d in out["documents"]}


def test_answers_are_stated_in_the_supporting_documents(task_data):
    for split in SPLITS:
        questions, docs = _split(task_data, split)
        for q in questions:
            assert q["supporting_doc_ids"] and all(d in docs for d in q["supporting_doc_ids"])
            support = " ".join(docs[d]["text"] for d in q["supporting_doc_ids"])
            for ev in q["evidence"]:  # every fact used is written in the document cited for it
                assert ev["doc_id"] in q["supporting_doc_ids"]
                assert contains_answer(docs[ev["doc_id"]]["text"], [ev["value"]]), ev
                assert contains_answer(docs[ev["doc_id"]]["text"], [ev["entity"]]), ev
            if q["type"] == "arithmetic":
                a, b = q["operands"]
                assert int(q["answer"]) == a - b > 0
                assert contains_answer(support, [f"{a:,}"]) and contains_answer(support, [f"{b:,}"])
            else:
                assert contains_answer(support, [q["answer"], *q["aliases"]]), q


def test_multi_hop_questions_need_two_documents(task_data):
    seen_hops = Counter()
    normalized = {s: {i: f" {normalize_text(d['text'])} " for i, d in _split(task_data, s)[1].items()} for s in SPLITS}
    for split in SPLITS:
        questions, docs = _split(task_data, split)
        for q in [q for q in questions if q["type"] == "multi_hop"]:
            seen_hops[q["hops"]] += 1
            assert len(set(q["supporting_doc_ids"])) == q["hops"] >= 2
            # The chain is real: each hop's value names the entity the next hop is about.
            for prev, nxt in zip(q["evidence"], q["evidence"][1:]):
                assert prev["value"] == nxt["entity"]
            assert contains_answer(q["evidence"][-1]["value"], [q["answer"], *q["aliases"]])
            # And no single document of the whole corpus holds both the subject and the answer.
            subject = q["entities"][0]
            assert contains_answer(q["question"], [subject])
            answers = [f" {normalize_text(a)} " for a in [q["answer"], *q["aliases"]]]
            for doc_id, text in normalized[split].items():
                if f" {normalize_text(subject)} " in text:
                    assert not any(a in text for a in answers), (q["question"], doc_id)
    assert set(seen_hops) == {2, 3}


def test_comparisons_pick_the_right_entity(task_data):
    smaller_wins = {
        "cmp.org.founded": True,
        "cmp.person.birth_year": True,
        "cmp.city.population": False,
        "cmp.product.price": False,
    }
    seen = set()
    for split in SPLITS:
        for q in [q for q in _split(task_data, split)[0] if q["type"] == "comparison"]:
            (a, b) = q["evidence"]
            va, vb = parse_number(a["value"]), parse_number(b["value"])
            assert va != vb
            winner = a if (va < vb) == smaller_wins[q["qtype"]] else b
            assert q["answer"] == winner["entity"]
            assert contains_answer(q["question"], [a["entity"]]) and contains_answer(q["question"], [b["entity"]])
            seen.add(q["qtype"])
    assert seen == set(smaller_wins)


def test_question_mix_and_records(task_data):
    questions, docs = _split(task_data, "train")
    types = Counter(q["type"] for q in questions)
    assert set(types) == {"single_hop", "multi_hop", "comparison", "arithmetic"}
    assert types["single_hop"] > types["comparison"]
    assert len({q["question"] for q in questions}) == len(questions)
    for q in questions:
        assert q["prompt"] == q["question"] and q["completion"] == q["answer"]
        assert q["messages"][0] == {"role": "user", "content": q["question"]}
        for d in q["distractor_doc_ids"]:  # distractors are about a different entity with the same name stem
            assert d in docs and d not in q["supporting_doc_ids"]
            kind = docs[d]["entity_type"]
            assert docs[d]["entity"] != q["entities"][0]
            assert _stem(docs[d]["entity"], kind) == _stem(q["entities"][0], kind)
    assert any(q["distractor_doc_ids"] for q in questions)
    per_entity = Counter(d["entity"] for d in docs.values())
    assert min(per_entity.values()) >= 1 and max(per_entity.values()) <= 3
    assert sum(v >= 2 for v in per_entity.values()) > len(per_entity) // 2  # facts spread over documents


def test_splits_are_separate_worlds(task_data):
    entities, stems, doc_ids = {}, {}, {}
    for split in SPLITS:
        questions, docs = _split(task_data, split)
        entities[split] = {d["entity"] for d in docs.values()}
        stems[split] = {_stem(d["entity"], d["entity_type"]) for d in docs.values()}
        doc_ids[split] = set(docs)
        for q in questions:  # questions only mention their own world
            assert set(q["entities"]) <= entities[split]
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            assert not entities[a] & entities[b]
            assert not stems[a] & stems[b]
            assert not doc_ids[a] & doc_ids[b]


def test_documents_and_questions_use_only_their_split_templates(task_data):
    for split in SPLITS:
        questions, docs = _split(task_data, split)
        for d in docs.values():
            assert d["template_ids"] and all(t.startswith("kb.doc.") and f".{split}." in t for t in d["template_ids"])
        for q in questions:
            assert [t.split(".")[-2] for t in q["template_ids"]] == [split]


def test_invented_names_look_invented():
    world = kb.build_world(split_rng(0, "knowledge_base", "train"), "train", 20)
    names = [e.label for e in world.values()]
    assert len(names) == len(set(names))
    common = {"London", "Paris", "Berlin", "Apple", "Google", "Microsoft", "Smith", "John", "Oxford", "Boston"}
    assert not {w for n in names for w in n.split()} & common


def test_too_small_world_is_a_clear_error():
    with pytest.raises(DataError, match="raise entities="):
        kb.knowledge_base(2000, 0, "train", entities=2)
    with pytest.raises(DataError, match="at least 2"):
        kb.knowledge_base(10, 0, "train", entities=1)


def test_shipped_sample_regenerates_bit_identically(tmp_path):
    shipped = kb.sample_dir()
    manifest = json.loads((shipped / "manifest.json").read_text())
    assert (manifest["task"], manifest["n"], manifest["seed"], manifest["splits"], manifest["options"]) == (
        kb.SAMPLE["name"],
        kb.SAMPLE["n"],
        kb.SAMPLE["seed"],
        list(kb.SAMPLE["splits"]),
        {},
    )
    make(kb.SAMPLE["name"], tmp_path, kb.SAMPLE["n"], seed=kb.SAMPLE["seed"], splits=kb.SAMPLE["splits"])
    files = sorted(p.name for p in shipped.iterdir())
    assert files == ["manifest.json", "test.jsonl", "test_documents.jsonl"]
    for name in files:
        assert filecmp.cmp(shipped / name, tmp_path / name, shallow=False), f"{name} differs: regenerate the sample"
    assert sum((shipped / f).stat().st_size for f in files) < 300_000
