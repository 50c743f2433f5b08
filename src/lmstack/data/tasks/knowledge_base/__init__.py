"""A fictional knowledge base: invented entities, documents about them, and questions only retrieval answers.

Each split is its own world of people, organisations, cities, products and events with random attributes
and relations (a founder, a headquarters city, a maker, a host city, ...). Every entity is written up in
2-3 short documents in varied prose: each fact sits in one document and about a third are repeated,
paraphrased, in another; some entities share a name stem ("Talvex Instruments" and "Talvex Academy"),
so their documents are distractors for each other.

Questions are single-hop ("When was X founded?"), multi-hop ("In which city was the founder of X born?",
up to three hops), comparisons ("Which was founded earlier, X or Y?") and arithmetic over facts ("How many
years after ... ?"). Each records its gold answer, aliases, supporting document ids and the evidence
(which fact of which document). A multi-hop question is kept only if no single document mentions both its
subject and its answer, so it cannot be answered from one document.

Names are built from syllables, and every fact is drawn at random, so no pretrained model can know an
answer. Name stems are partitioned between splits by hash, so two splits never share an entity; every
document and question template belongs to one split.

The parts: `pools` and `templates` hold the words (data only), `world` invents the entities, `documents`
writes them up and `questions` finds what can be asked; this module picks the questions and makes rows.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

from lmstack.data.tasks.answers import normalize_text
from lmstack.data.tasks.common import check_split, fill, progress, split_rng, too_few
from lmstack.data.tasks.knowledge_base.documents import write_documents
from lmstack.data.tasks.knowledge_base.pools import CATEGORIES, FIELDS, OCCUPATIONS
from lmstack.data.tasks.knowledge_base.questions import TYPE_WEIGHTS, Question, candidate_questions, needs_two_documents
from lmstack.data.tasks.knowledge_base.templates import DOC_TEMPLATES, QUESTION_TEMPLATES
from lmstack.data.tasks.knowledge_base.world import Entity, Fact, build_world
from lmstack.errors import DataError

__all__ = [
    "CATEGORIES",
    "DOC_TEMPLATES",
    "FIELDS",
    "OCCUPATIONS",
    "QUESTION_TEMPLATES",
    "SAMPLE",
    "Entity",
    "Fact",
    "build_world",
    "knowledge_base",
    "sample_dir",
    "write_documents",
]

# The shipped sample (src/lmstack/data/samples/kb) is exactly `make(**SAMPLE)`; a test regenerates it.
SAMPLE = {"name": "knowledge_base", "n": 120, "seed": 0, "splits": ("test",)}


def knowledge_base(n: int, seed: int, split: str, entities: int | None = None) -> dict[str, list[dict]]:
    """A fictional world (documents) with single-hop, multi-hop, comparison and arithmetic questions.

    `entities` is the number of organisations (people, cities, products and events scale with it);
    by default it grows with `n` so that there are enough distinct questions."""
    check_split(split)
    n_orgs = entities if entities is not None else max(8, math.ceil(n / 8))
    if n_orgs < 2:
        raise DataError(f"knowledge_base needs at least 2 organisations, got entities={n_orgs}")
    rng = split_rng(seed, "knowledge_base", split)
    world = build_world(rng, split, n_orgs)
    docs = write_documents(rng, split, world)
    candidates = candidate_questions(rng, world)
    normalized_docs = [f" {normalize_text(d['text'])} " for d in docs]
    kinds = list(TYPE_WEIGHTS)
    questions: list[dict] = []
    seen: set[str] = set()
    with progress(n, f"knowledge_base {split}") as advance:
        while len(questions) < n:
            open_kinds = [k for k in kinds if candidates[k]]
            if not open_kinds:
                raise too_few("knowledge_base", split, len(questions), n, "raise entities= or ask for fewer")
            kind = rng.choices(open_kinds, weights=[TYPE_WEIGHTS[k] for k in open_kinds])[0]
            q = candidates[kind].pop()
            if q.kind == "multi_hop" and not needs_two_documents(q, normalized_docs):
                continue
            tid, template = QUESTION_TEMPLATES.pick(rng, q.qtype, split)
            text = fill(template, **q.names)
            if text in seen:
                continue
            seen.add(text)
            questions.append(_record(split, len(questions), q, tid, text, world))
            advance(1)
    return {"items": questions, "documents": docs}


def _record(split: str, index: int, q: Question, tid: str, text: str, world: dict[str, Entity]) -> dict:
    evidence = [
        {"doc_id": e.fact_docs[k][0], "entity": e.label, "fact": k, "value": e.facts[k].text} for e, k in q.evidence
    ]
    support = list(dict.fromkeys(ev["doc_id"] for ev in evidence))
    used = {e.id for e, _ in q.evidence}
    similar = [d for e in world.values() if e.stem == q.subject.stem and e.id not in used for d in e.docs]
    aliases = [a for a in dict.fromkeys(q.aliases) if a != q.answer]
    record = {
        "id": f"knowledge_base-{split}-{index:06d}",
        "task": "knowledge_base",
        "split": split,
        "question": text,
        "answer": q.answer,
        "aliases": aliases,
        "type": q.kind,
        "hops": q.hops,
        "qtype": q.qtype,
        "supporting_doc_ids": support,
        "evidence": evidence,
        "distractor_doc_ids": similar,
        "entities": list(dict.fromkeys([e.label for e, _ in q.evidence])),
        "template_ids": [tid],
    }
    if q.operands:
        record["operation"] = "subtract"
        record["operands"] = q.operands
    record["prompt"] = text
    record["completion"] = q.answer
    record["messages"] = [{"role": "user", "content": text}, {"role": "assistant", "content": q.answer}]
    return record


def sample_dir() -> Path:
    """The shipped knowledge-base sample: `test.jsonl` (questions), `test_documents.jsonl`, `manifest.json`."""
    return Path(str(resources.files("lmstack.data").joinpath("samples", "kb")))
