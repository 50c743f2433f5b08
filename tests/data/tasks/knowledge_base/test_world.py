"""A world on its own: references stay inside it, stems belong to its split, facts are consistent in time."""

import pytest

from lmstack.data.tasks.common import SPLITS, hash_split, split_rng
from lmstack.data.tasks.knowledge_base.world import build_world


@pytest.mark.parametrize("split", SPLITS)
def test_references_stay_in_the_world_and_stems_belong_to_the_split(split):
    world = build_world(split_rng(1, "knowledge_base", split), split, 10)
    assert {e.type for e in world.values()} == {"person", "org", "city", "product", "event"}
    for e in world.values():
        assert hash_split(f"kb/{e.stem.lower()}") == split, e.name
        for fact in e.facts.values():
            assert fact.ref is None or fact.ref in world, (e.id, fact)


def _year(entity, key: str) -> int:
    return entity.facts[key].number


def test_relations_respect_time():
    world = build_world(split_rng(2, "knowledge_base", "train"), "train", 12)
    for e in world.values():
        if e.type == "org":
            assert _year(e, "founded") > _year(world[e.facts["founder"].ref], "birth_year")
        if e.type == "product":
            assert _year(e, "launched") > _year(world[e.facts["maker"].ref], "founded")
        if e.type == "person" and "studied_at" in e.facts:
            assert _year(world[e.facts["studied_at"].ref], "founded") <= _year(e, "birth_year") + 18
