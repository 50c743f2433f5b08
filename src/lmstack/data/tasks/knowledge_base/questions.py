"""The questions a world can answer: every single-hop fact, chains of facts (multi-hop), comparisons and
differences of two numbers, each with the evidence (which fact of which entity) it rests on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from lmstack.data.tasks.answers import normalize_text
from lmstack.data.tasks.knowledge_base.world import Entity

_CHAINS = {  # question type -> the start type and the facts followed, one hop each
    "org.founder.birth_city": ("org", ["founder", "birth_city"]),
    "org.founder.birth_year": ("org", ["founder", "birth_year"]),
    "org.hq.region": ("org", ["hq", "region"]),
    "product.maker.hq": ("product", ["maker", "hq"]),
    "product.maker.founder": ("product", ["maker", "founder"]),
    "product.maker.founder.birth_city": ("product", ["maker", "founder", "birth_city"]),
    "event.organiser.founded": ("event", ["organiser", "founded"]),
    "event.host.region": ("event", ["host", "region"]),
    "person.studied_at.hq": ("person", ["studied_at", "hq"]),
}
_COMPARISONS = {  # question type -> (entity type, fact, True if the smaller value wins)
    "cmp.org.founded": ("org", "founded", True),
    "cmp.person.birth_year": ("person", "birth_year", True),
    "cmp.city.population": ("city", "population", False),
    "cmp.product.price": ("product", "price", False),
}
# How often each kind of question is asked.
TYPE_WEIGHTS = {"single_hop": 0.4, "multi_hop": 0.3, "comparison": 0.15, "arithmetic": 0.15}


@dataclass
class Question:
    qtype: str
    kind: str
    names: dict[str, str]
    answer: str
    aliases: list[str]
    evidence: list[tuple[Entity, str]]  # (entity, fact) in reasoning order
    subject: Entity
    hops: int = 1  # facts that must be chained (a comparison or a difference of two facts is one hop)
    operands: list[int] = field(default_factory=list)


def candidate_questions(rng: random.Random, world: dict[str, Entity]) -> dict[str, list[Question]]:
    """Every question the world supports, by kind, shuffled: the generator pops from these lists."""
    by_type: dict[str, list[Entity]] = {}
    for e in world.values():
        by_type.setdefault(e.type, []).append(e)
    out: dict[str, list[Question]] = {k: [] for k in TYPE_WEIGHTS}
    for e in world.values():
        for key, f in e.facts.items():
            out["single_hop"].append(
                Question(f"{e.type}.{key}", "single_hop", {"a": e.name}, f.answer, f.aliases, [(e, key)], e)
            )
    for qtype, (etype, path) in _CHAINS.items():
        for e in by_type.get(etype, []):
            node, evidence = e, []
            for key in path:
                if key not in node.facts:
                    break
                evidence.append((node, key))
                nxt = node.facts[key].ref
                if nxt is None:
                    break
                node = world[nxt]
            if len(evidence) != len(path):
                continue
            last, key = evidence[-1]
            f = last.facts[key]
            out["multi_hop"].append(
                Question(qtype, "multi_hop", {"a": e.name}, f.answer, f.aliases, evidence, e, hops=len(path))
            )
    for qtype, (etype, key, smaller_wins) in _COMPARISONS.items():
        pool = by_type.get(etype, [])
        for _ in range(3 * len(pool)):
            if len(pool) < 2:
                break
            a, b = rng.sample(pool, 2)
            va, vb = a.facts[key].number, b.facts[key].number
            if va == vb:
                continue
            win = a if (va < vb) == smaller_wins else b
            out["comparison"].append(
                Question(qtype, "comparison", {"a": a.name, "b": b.name}, win.label, [], [(a, key), (b, key)], a)
            )
    for o in by_type.get("org", []):
        founder = world[o.facts["founder"].ref]
        out["arithmetic"].append(
            _arith("arith.founder_age", {"a": o.name}, o, [(o, "founder"), (o, "founded"), (founder, "birth_year")])
        )
    for x in by_type.get("product", []):
        maker = world[x.facts["maker"].ref]
        out["arithmetic"].append(
            _arith("arith.launch_gap", {"a": x.name}, x, [(x, "maker"), (x, "launched"), (maker, "founded")])
        )
    events, orgs = by_type.get("event", []), by_type.get("org", [])
    for pool, qtype, key in ((events, "arith.event_gap", "year"), (orgs, "arith.employees", "employees")):
        for _ in range(2 * len(pool)):
            if len(pool) < 2:
                break
            a, b = rng.sample(pool, 2)
            if a.facts[key].number == b.facts[key].number:
                continue
            if a.facts[key].number < b.facts[key].number:
                a, b = b, a
            out["arithmetic"].append(_arith(qtype, {"a": a.name, "b": b.name}, a, [(a, key), (b, key)]))
    for group in out.values():
        rng.shuffle(group)
    return out


def _arith(qtype: str, names: dict[str, str], subject: Entity, evidence: list[tuple[Entity, str]]) -> Question:
    """A difference of two numeric facts; with a bridge fact (founder, maker) it takes two hops."""
    values = [e.facts[k].number for e, k in evidence if e.facts[k].number is not None]
    diff = values[0] - values[1]
    years = qtype != "arith.employees"
    return Question(
        qtype,
        "arithmetic",
        names,
        str(diff),
        [f"{diff} years"] if years else [f"{diff:,}"],
        evidence,
        subject,
        hops=2 if len(evidence) > 2 else 1,
        operands=values,
    )


def needs_two_documents(q: Question, normalized_docs: list[str]) -> bool:
    """No single document mentions both the question's subject and its answer (as whole words)."""
    subject = f" {normalize_text(q.subject.label)} "
    answers = [f" {normalize_text(a)} " for a in [q.answer, *q.aliases] if normalize_text(a)]
    return not any(subject in d and any(a in d for a in answers) for d in normalized_docs)
