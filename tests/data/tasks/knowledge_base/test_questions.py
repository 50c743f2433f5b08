"""Candidate questions of a world: their answers follow the evidence, and multi-hop ones need two documents."""

from lmstack.data.tasks.answers import normalize_text
from lmstack.data.tasks.common import split_rng
from lmstack.data.tasks.knowledge_base.questions import TYPE_WEIGHTS, candidate_questions, needs_two_documents
from lmstack.data.tasks.knowledge_base.world import build_world


def _candidates():
    rng = split_rng(4, "knowledge_base", "test")
    world = build_world(rng, "test", 10)
    return world, candidate_questions(rng, world)


def test_every_kind_has_candidates_whose_answers_follow_the_evidence():
    world, candidates = _candidates()
    assert set(candidates) == set(TYPE_WEIGHTS) and all(candidates.values())
    for q in candidates["single_hop"] + candidates["multi_hop"]:
        last, key = q.evidence[-1]
        assert q.answer == last.facts[key].answer and q.hops == len(q.evidence)
        for (e, k), (nxt, _) in zip(q.evidence, q.evidence[1:]):  # each hop follows a reference
            assert world[e.facts[k].ref] is nxt
    for q in candidates["arithmetic"]:
        assert int(q.answer) == q.operands[0] - q.operands[1] > 0


def test_a_multi_hop_question_answerable_from_one_document_is_refused():
    _, candidates = _candidates()
    q = candidates["multi_hop"][0]
    subject, answer = normalize_text(q.subject.label), normalize_text(q.answer)
    assert needs_two_documents(q, [f" {subject} was founded ", f" it is in {answer} "])
    assert not needs_two_documents(q, [f" {subject} is linked to {answer} "])
