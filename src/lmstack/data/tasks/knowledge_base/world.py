"""The world of one split: invented entities with random attributes and relations between them."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from lmstack.data.tasks.common import hash_split
from lmstack.data.tasks.knowledge_base.pools import (
    CATEGORIES,
    CITY_ENDS,
    CODAS,
    COMPANY_KINDS,
    EVENT_KINDS,
    FIELDS,
    GIVEN_ENDS,
    INSTITUTE_KINDS,
    MODEL_WORDS,
    OCCUPATIONS,
    ONSETS,
    REGION_KINDS,
    SIMPLE_ONSETS,
    VOWELS,
)
from lmstack.errors import DataError


@dataclass
class Fact:
    text: str  # how documents state the value ("an astronomer", "$1,250", "4,210")
    answer: str  # the canonical answer ("astronomer", "$1,250", "4210")
    aliases: list[str]
    number: int | None = None
    ref: str | None = None  # the id of the entity this fact points to


@dataclass
class Entity:
    id: str
    type: str
    name: str  # as written mid-sentence ("the Orvenna Summit")
    stem: str
    facts: dict[str, Fact] = field(default_factory=dict)
    docs: list[str] = field(default_factory=list)
    fact_docs: dict[str, list[str]] = field(default_factory=dict)  # fact -> ids of docs stating it

    @property
    def label(self) -> str:
        return self.name[4:] if self.name.startswith("the ") else self.name


def _number(x: int) -> Fact:
    return Fact(f"{x:,}", str(x), [f"{x:,}"], number=x)


def _year(y: int) -> Fact:
    return Fact(str(y), str(y), [], number=y)


def _with_article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


class _Names:
    """Invented names whose stems belong to one split (by hash), never reused within a world."""

    def __init__(self, rng: random.Random, split: str):
        self.rng, self.split, self.used = rng, split, set()

    def _word(self, syllables: int, ending: str | None) -> str:
        r = self.rng
        onsets = [r.choice(ONSETS)] + [r.choice(SIMPLE_ONSETS) for _ in range(syllables - 1)]
        word = "".join(o + r.choice(VOWELS) for o in onsets)
        return (word + (ending if ending is not None else r.choice(CODAS))).capitalize()

    def stem(self, ending: str | None = None) -> str:
        for _ in range(10000):
            word = self._word(self.rng.choice([2, 2, 3]) if ending is None else 1, ending)
            if not 4 <= len(word) <= 11 or word in self.used:
                continue
            if hash_split(f"kb/{word.lower()}") != self.split:
                continue
            self.used.add(word)
            return word
        raise DataError("ran out of invented names; ask for a smaller knowledge base")

    def given(self) -> str:
        r = self.rng
        return (r.choice(ONSETS) + r.choice(VOWELS) + r.choice(SIMPLE_ONSETS) + r.choice(GIVEN_ENDS)).capitalize()


def build_world(rng: random.Random, split: str, n_orgs: int) -> dict[str, Entity]:
    """Entities with attributes and relations; every reference points inside the same world."""
    names = _Names(rng, split)
    world: dict[str, Entity] = {}
    counts: dict[str, int] = {}
    person_names: set[str] = set()

    def add(kind: str, name: str, stem: str) -> Entity:
        counts[kind] = counts.get(kind, 0) + 1
        e = Entity(f"{kind}-{counts[kind] - 1:04d}", kind, name, stem)
        world[e.id] = e
        return e

    regions = [f"the {names.stem()} {rng.choice(REGION_KINDS)}" for _ in range(max(3, n_orgs // 4))]
    cities = []
    for _ in range(max(4, n_orgs * 2 // 3)):
        stem = names.stem(ending=rng.choice(CITY_ENDS))
        c = add("city", stem, stem)
        c.facts["founded"] = _year(rng.randint(600, 1850))
        c.facts["population"] = _number(rng.randint(8_000, 2_400_000))
        region = rng.choice(regions)
        c.facts["region"] = Fact(region, region[4:], [region])
        cities.append(c)

    def person(family: str) -> Entity:
        given = names.given()
        while f"{given} {family}" in person_names:
            given = names.given()
        person_names.add(f"{given} {family}")
        p = add("person", f"{given} {family}", family)
        p.facts["birth_year"] = _year(rng.randint(1850, 1975))
        city = rng.choice(cities)
        p.facts["birth_city"] = Fact(city.name, city.name, [], ref=city.id)
        job = rng.choice(OCCUPATIONS)
        p.facts["occupation"] = Fact(_with_article(job), job, [])
        return p

    def people(count: int) -> list[Entity]:
        out = []
        for _ in range(count):
            family = names.stem()
            out.append(person(family))
            if rng.random() < 0.25:  # a namesake: same family name, different person (a distractor)
                out.append(person(family))
        return out

    orgs: list[Entity] = []
    for i in range(n_orgs):
        stem = names.stem()
        kinds = [INSTITUTE_KINDS if i % 3 == 0 else COMPANY_KINDS]
        if rng.random() < 0.3:  # a sibling organisation with the same stem (a distractor)
            kinds.append(COMPANY_KINDS if kinds[0] is INSTITUTE_KINDS else INSTITUTE_KINDS)
        for pool in kinds:
            o = add("org", f"{stem} {rng.choice(pool)}", stem)
            o.facts["kind"] = Fact("institute" if pool is INSTITUTE_KINDS else "company", "", [])
            founder = people(1)[0]
            o.facts["founded"] = _year(min(2015, founder.facts["birth_year"].number + rng.randint(22, 60)))
            o.facts["founder"] = Fact(founder.name, founder.name, [], ref=founder.id)
            hq = rng.choice(cities)
            o.facts["hq"] = Fact(hq.name, hq.name, [], ref=hq.id)
            o.facts["employees"] = _number(rng.randint(12, 48_000))
            area = rng.choice(FIELDS)
            o.facts["field"] = Fact(area, area, [])
            orgs.append(o)
    people(max(2, n_orgs // 2))

    # Education: people studied at an institute that existed when they were 18 (never one they founded).
    institutes = [o for o in orgs if o.facts["kind"].text == "institute"]
    for p in [e for e in world.values() if e.type == "person"]:
        born = p.facts["birth_year"].number
        options = [o for o in institutes if o.facts["founded"].number <= born + 18 and o.facts["founder"].ref != p.id]
        if options and rng.random() < 0.7:
            school = rng.choice(options)
            p.facts["studied_at"] = Fact(school.name, school.name, [], ref=school.id)

    companies = [o for o in orgs if o.facts["kind"].text == "company"]
    product_lines: dict[str, list[str]] = {}  # stem -> model words used
    for _ in range(max(3, n_orgs)):
        if product_lines and rng.random() < 0.3:
            stem = rng.choice(list(product_lines))  # a sibling product line (a distractor)
        else:
            stem = names.stem()
            product_lines[stem] = []
        model = rng.choice([w for w in MODEL_WORDS if w not in product_lines[stem]])
        product_lines[stem].append(model)
        x = add("product", f"{stem} {model}", stem)
        maker = rng.choice(companies)
        x.facts["maker"] = Fact(maker.name, maker.name, [], ref=maker.id)
        x.facts["launched"] = _year(min(2023, maker.facts["founded"].number + rng.randint(1, 40)))
        price = rng.randint(20, 9000)
        x.facts["price"] = Fact(f"${price:,}", f"${price:,}", [str(price), f"{price:,} dollars"], number=price)
        category = rng.choice(CATEGORIES)
        x.facts["category"] = Fact(_with_article(category), category, [])

    for _ in range(max(3, n_orgs // 2)):
        stem = names.stem()
        ev = add("event", f"the {stem} {rng.choice(EVENT_KINDS)}", stem)
        organiser, host = rng.choice(orgs), rng.choice(cities)
        ev.facts["year"] = _year(min(2023, organiser.facts["founded"].number + rng.randint(1, 50)))
        ev.facts["host"] = Fact(host.name, host.name, [], ref=host.id)
        ev.facts["organiser"] = Fact(organiser.name, organiser.name, [], ref=organiser.id)
        ev.facts["attendance"] = _number(rng.randint(300, 250_000))

    for o in orgs:
        del o.facts["kind"]  # a construction detail, not a stated fact
    _add_name_aliases(world)
    return world


def _add_name_aliases(world: dict[str, Entity]) -> None:
    """A person's family name or an organisation's stem is an alias only when no other entity shares it."""
    stem_count: dict[str, int] = {}
    for e in world.values():
        stem_count[e.stem] = stem_count.get(e.stem, 0) + 1
    for e in world.values():
        for f in e.facts.values():
            if f.ref is None:
                continue
            target = world[f.ref]
            if target.type in ("person", "org") and stem_count[target.stem] == 1:
                f.aliases = [target.stem]
