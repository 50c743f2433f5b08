"""The documents of a world: each entity written up in 2-3 short texts, from the split's templates."""

from __future__ import annotations

import random

from lmstack.data.tasks.common import check_split, fill
from lmstack.data.tasks.knowledge_base.pools import DOC_KINDS
from lmstack.data.tasks.knowledge_base.templates import DOC_TEMPLATES
from lmstack.data.tasks.knowledge_base.world import Entity


def write_documents(rng: random.Random, split: str, world: dict[str, Entity]) -> list[dict]:
    """2-3 documents per entity (2 for cities and products); each fact in one, a third of them in two."""
    docs = []
    for e in world.values():
        kinds = DOC_KINDS[e.type][: 2 if e.type in ("city", "product") else rng.randint(2, 3)]
        bodies: list[list[tuple[str, str]]] = [[] for _ in kinds]  # (template id, sentence)
        placed: list[list[str]] = [[] for _ in kinds]
        for key, fact in e.facts.items():
            first = rng.randrange(len(kinds))
            targets = [first]
            if rng.random() < 0.35:
                targets.append(rng.choice([k for k in range(len(kinds)) if k != first]))
            for k in targets:
                tid, template = DOC_TEMPLATES.pick(rng, f"{e.type}.{key}", split)
                bodies[k].append((tid, fill(template, name=e.name, value=fact.text)))
                placed[k].append(key)
        for k, kind in enumerate(kinds):
            if not bodies[k]:
                continue
            rng.shuffle(bodies[k])
            fillers = DOC_TEMPLATES.table["filler"][check_split(split)]
            for j in rng.sample(range(len(fillers)), rng.randint(0, 2)):
                tid = f"{DOC_TEMPLATES.prefix}.filler.{split}.{j}"
                bodies[k].insert(rng.randint(1, len(bodies[k])), (tid, fill(fillers[j], name=e.name)))
            doc_id = f"kb-{split}-{e.id}-{k}"
            e.docs.append(doc_id)
            for key in placed[k]:
                e.fact_docs.setdefault(key, []).append(doc_id)
            docs.append(
                {
                    "id": doc_id,
                    "title": f"{e.label} ({kind})",
                    "text": " ".join(s for _, s in bodies[k]),
                    "entity": e.label,
                    "entity_type": e.type,
                    "template_ids": [t for t, _ in bodies[k]],
                }
            )
    return docs
