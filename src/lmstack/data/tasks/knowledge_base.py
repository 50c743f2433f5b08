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
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from lmstack.data.tasks.answers import normalize_text
from lmstack.data.tasks.common import Templates, check_split, fill, hash_split, progress, split_rng, too_few
from lmstack.errors import DataError

# The shipped sample (src/lmstack/data/samples/kb) is exactly `make(**SAMPLE)`; a test regenerates it.
SAMPLE = {"name": "knowledge_base", "n": 120, "seed": 0, "splits": ("test",)}

_ONSETS = [
    "b",
    "d",
    "f",
    "g",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "br",
    "dr",
    "gr",
    "kr",
    "tr",
    "th",
    "st",
    "sk",
    "vr",
]
_SIMPLE_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "r", "s", "t", "v", "z"]
_VOWELS = ["a", "e", "i", "o", "u", "a", "e", "o", "ae", "ei", "ou"]
_CODAS = ["", "n", "r", "l", "s", "th", "x", "m", "nd", "rk", "sk", "v", "t"]
_GIVEN_ENDS = ["a", "o", "en", "is", "et", "ian", "ira", "ek", "ova", "in", "eth", "ara"]
_CITY_ENDS = ["ossa", "undra", "ethe", "ivar", "arum", "enholt", "oreth", "avik", "usk", "elle"]
_REGION_KINDS = ["Highlands", "Coast", "Basin", "Marches", "Vale", "Steppe", "Lowlands", "Reach"]
_COMPANY_KINDS = ["Instruments", "Analytics", "Foundry", "Robotics", "Textiles", "Shipping", "Press", "Optics"]
_INSTITUTE_KINDS = ["Institute", "Academy", "Observatory", "College", "Conservatory"]
_EVENT_KINDS = ["Festival", "Summit", "Regatta", "Symposium", "Fair", "Exposition", "Games", "Congress"]
_MODEL_WORDS = [
    "Prism",
    "Vane",
    "Beacon",
    "Loom",
    "Compass",
    "Lantern",
    "Anvil",
    "Harbor",
    "Meridian",
    "Kestrel",
    "Atlas",
    "Sable",
    "Quill",
    "Spindle",
    "Orbit",
    "Cinder",
]
OCCUPATIONS = [
    "engineer",
    "botanist",
    "cartographer",
    "composer",
    "chemist",
    "architect",
    "economist",
    "glassblower",
    "astronomer",
    "historian",
    "sculptor",
    "geologist",
    "linguist",
    "surgeon",
    "navigator",
    "printer",
]
FIELDS = [
    "optical sensors",
    "river freight",
    "textile dyes",
    "weather forecasting",
    "glass lenses",
    "rail signalling",
    "seed banking",
    "bell casting",
    "paper restoration",
    "water filtration",
    "clockmaking",
    "map printing",
    "ceramic tiles",
    "wind turbines",
    "medical imaging",
    "acoustic design",
]
CATEGORIES = [
    "telescope",
    "bicycle",
    "synthesizer",
    "sewing machine",
    "camera",
    "kettle",
    "drone",
    "barometer",
    "typewriter",
    "metronome",
    "lamp",
    "compass",
    "microscope",
    "loudspeaker",
    "water pump",
]
_DOC_KINDS = {
    "person": ["biography", "profile", "archive note"],
    "org": ["overview", "press release", "directory entry"],
    "city": ["gazetteer entry", "travel guide"],
    "product": ["catalogue entry", "review"],
    "event": ["report", "programme note"],
}

# Document sentences: slot "<type>.<fact>" -> (train, validation, test); fields {name} and {value}.
DOC_TEMPLATES = Templates(
    "kb.doc",
    {
        "person.birth_year": (
            ["{name} was born in {value}.", "Records show that {name} came into the world in {value}."],
            ["The birth year of {name} is given as {value}.", "{name}, born in {value}, grew up surrounded by books."],
            [
                "{name} entered the world in {value}.",
                "According to family papers, {name} was born in the year {value}.",
            ],
        ),
        "person.birth_city": (
            ["{name} was born in the city of {value}.", "{name} is a native of {value}."],
            ["{value} is the birthplace of {name}.", "{name} was born and raised in {value}."],
            [
                "{name} hails from {value}, where the family lived for generations.",
                "The city of {value} is where {name} was born.",
            ],
        ),
        "person.occupation": (
            ["{name} works as {value}.", "By profession, {name} is {value}."],
            ["{name} built a career as {value}.", "Colleagues know {name} as {value} of unusual patience."],
            ["{name} earns a living as {value}.", "For most of a long career, {name} has been {value}."],
        ),
        "person.studied_at": (
            ["{name} studied at {value}.", "{name} is a graduate of {value}."],
            ["{name} completed a degree at {value}.", "{name} trained at {value} as a young adult."],
            ["{name} was educated at {value}.", "{name} earned a diploma from {value}."],
        ),
        "org.founded": (
            ["{name} was founded in {value}.", "{name} has existed since {value}."],
            ["{name} was established in {value}.", "The story of {name} begins in {value}, the year it opened."],
            ["{name} dates back to {value}.", "{name} first opened its doors in {value}."],
        ),
        "org.founder": (
            ["{name} was founded by {value}.", "{value} is the founder of {name}."],
            ["{value} set up {name}.", "{name} owes its existence to its founder, {value}."],
            ["{name} was started by {value}.", "The person who created {name} was {value}."],
        ),
        "org.hq": (
            ["{name} is headquartered in {value}.", "The head office of {name} is in {value}."],
            ["{name} is based in {value}.", "{name} runs its operations from {value}."],
            ["{name} keeps its main offices in {value}.", "The headquarters of {name} stand in {value}."],
        ),
        "org.employees": (
            ["{name} employs {value} people.", "{name} has a staff of {value}."],
            ["The workforce of {name} numbers {value}.", "{value} people work for {name}."],
            ["{name} counts {value} employees.", "There are {value} people on the payroll of {name}."],
        ),
        "org.field": (
            ["{name} specialises in {value}.", "{name} is known for its work in {value}."],
            ["{name} focuses on {value}.", "The main business of {name} is {value}."],
            ["{name} concentrates on {value}.", "Most of what {name} does concerns {value}."],
        ),
        "city.founded": (
            ["{name} was first settled in {value}.", "The first houses of {name} were built in {value}."],
            ["{name} was granted its charter in {value}.", "Chroniclers date the founding of {name} to {value}."],
            ["{name} grew from a village first recorded in {value}.", "The town of {name} goes back to {value}."],
        ),
        "city.population": (
            ["{name} has a population of {value}.", "The population of {name} is {value}."],
            ["{name} is home to {value} residents.", "The last census counted {value} inhabitants in {name}."],
            ["{name} houses {value} people.", "A total of {value} people call {name} home."],
        ),
        "city.region": (
            ["{name} lies in {value}.", "{name} is a city in {value}."],
            ["{name} is located in {value}.", "{name} sits within {value}."],
            ["{name} belongs to {value}.", "You will find {name} in {value}."],
        ),
        "product.maker": (
            ["{name} is made by {value}.", "{value} manufactures {name}."],
            ["{name} is produced by {value}.", "{name} comes from the workshops of {value}."],
            ["{name} is built by {value}.", "{value} is the maker of {name}."],
        ),
        "product.launched": (
            ["{name} was launched in {value}.", "{name} first went on sale in {value}."],
            ["{name} was released in {value}.", "{name} reached the market in {value}."],
            ["{name} debuted in {value}.", "Shops began selling {name} in {value}."],
        ),
        "product.price": (
            ["{name} costs {value}.", "{name} sells for {value}."],
            ["{name} is priced at {value}.", "The list price of {name} is {value}."],
            ["{name} retails at {value}.", "Buyers pay {value} for {name}."],
        ),
        "product.category": (
            ["{name} is {value}.", "In short, {name} is {value} for demanding users."],
            ["{name} is sold as {value}.", "Reviewers describe {name} as {value}."],
            ["{name} was designed as {value}.", "At heart, {name} is {value}."],
        ),
        "event.year": (
            ["{name} took place in {value}.", "{name} was held in {value}."],
            ["{name} happened in {value}.", "In {value}, {name} drew crowds from far away."],
            ["{name} ran in {value}.", "The year {value} saw {name} take place."],
        ),
        "event.host": (
            ["{name} was hosted by the city of {value}.", "{value} hosted {name}."],
            ["{name} was staged in {value}.", "The venue of {name} was in {value}."],
            ["{name} was set in the city of {value}.", "{value} welcomed the visitors of {name}."],
        ),
        "event.organiser": (
            ["{name} was organised by {value}.", "{value} organised {name}."],
            ["{name} was arranged by {value}.", "The organiser of {name} was {value}."],
            ["{value} put together {name}.", "{name} was run by {value}."],
        ),
        "event.attendance": (
            ["{name} attracted {value} visitors.", "{value} people attended {name}."],
            ["{name} drew a crowd of {value}.", "Attendance at {name} reached {value}."],
            ["{name} welcomed {value} guests.", "A total of {value} people came to {name}."],
        ),
        "filler": (
            [
                "{name} is often mentioned in local newspapers.",
                "Little else about {name} is widely known.",
                "Several books discuss {name} in passing.",
                "Opinions about {name} differ among experts.",
            ],
            ["{name} appears in a number of regional archives.", "Historians have written about {name} at length."],
            [
                "{name} is a frequent topic of conversation in the area.",
                "Not everyone agrees on what makes {name} notable.",
            ],
        ),
    },
)

# Question templates: slot = question type -> (train, validation, test).
QUESTION_TEMPLATES = Templates(
    "kb.q",
    {
        "person.birth_year": (
            ["In what year was {a} born?", "What is the birth year of {a}?"],
            ["When was {a} born?"],
            ["Which year was {a} born in?"],
        ),
        "person.birth_city": (
            ["Where was {a} born?", "In which city was {a} born?"],
            ["What is the birthplace of {a}?"],
            ["Which city does {a} come from?"],
        ),
        "person.occupation": (
            ["What is {a}'s occupation?", "What does {a} do for a living?"],
            ["What is {a}'s profession?"],
            ["What job does {a} have?"],
        ),
        "person.studied_at": (
            ["Where did {a} study?", "Which institution did {a} attend?"],
            ["At which school was {a} trained?"],
            ["Where was {a} educated?"],
        ),
        "org.founded": (
            ["When was {a} founded?", "In what year was {a} founded?"],
            ["In which year was {a} established?"],
            ["What is the founding year of {a}?"],
        ),
        "org.founder": (
            ["Who founded {a}?", "Who is the founder of {a}?"],
            ["Who set up {a}?"],
            ["Which person started {a}?"],
        ),
        "org.hq": (
            ["In which city is {a} headquartered?", "Where is the head office of {a}?"],
            ["Where is {a} based?"],
            ["In what city does {a} have its headquarters?"],
        ),
        "org.employees": (
            ["How many people does {a} employ?", "How large is the staff of {a}?"],
            ["How many employees does {a} have?"],
            ["What is the size of {a}'s workforce?"],
        ),
        "org.field": (
            ["What does {a} specialise in?", "What field is {a} known for?"],
            ["What is the main business of {a}?"],
            ["What area does {a} concentrate on?"],
        ),
        "city.founded": (
            ["When was {a} first settled?", "In what year was {a} founded?"],
            ["When did {a} get its start?"],
            ["What year does {a} go back to?"],
        ),
        "city.population": (
            ["What is the population of {a}?", "How many people live in {a}?"],
            ["How many residents does {a} have?"],
            ["How many inhabitants does {a} have?"],
        ),
        "city.region": (
            ["In which region is {a}?", "Which region does {a} lie in?"],
            ["Where is {a} located?"],
            ["To which region does {a} belong?"],
        ),
        "product.maker": (
            ["Which company makes {a}?", "Who manufactures {a}?"],
            ["Which firm produces {a}?"],
            ["Who is the maker of {a}?"],
        ),
        "product.launched": (
            ["When was {a} launched?", "In what year did {a} go on sale?"],
            ["When was {a} released?"],
            ["In which year did {a} debut?"],
        ),
        "product.price": (
            ["How much does {a} cost?", "What is the price of {a}?"],
            ["What does {a} sell for?"],
            ["How much do buyers pay for {a}?"],
        ),
        "product.category": (
            ["What kind of product is {a}?", "What sort of device is {a}?"],
            ["What type of product is {a}?"],
            ["What is {a}, as a product?"],
        ),
        "event.year": (
            ["In what year did {a} take place?", "When was {a} held?"],
            ["When did {a} happen?"],
            ["Which year saw {a}?"],
        ),
        "event.host": (
            ["Which city hosted {a}?", "Where was {a} held?"],
            ["In which city was {a} staged?"],
            ["What city welcomed {a}?"],
        ),
        "event.organiser": (
            ["Who organised {a}?", "Which organisation ran {a}?"],
            ["Who arranged {a}?"],
            ["Who put together {a}?"],
        ),
        "event.attendance": (
            ["How many people attended {a}?", "How many visitors did {a} attract?"],
            ["How large was the crowd at {a}?"],
            ["How many guests came to {a}?"],
        ),
        "org.founder.birth_city": (
            ["In which city was the founder of {a} born?", "Where was the person who founded {a} born?"],
            ["What is the birthplace of the founder of {a}?"],
            ["Which city does the founder of {a} come from?"],
        ),
        "org.founder.birth_year": (
            ["In what year was the founder of {a} born?", "When was the founder of {a} born?"],
            ["What is the birth year of the person who set up {a}?"],
            ["Which year was the creator of {a} born in?"],
        ),
        "org.hq.region": (
            ["In which region is {a} headquartered?", "Which region is the head office of {a} in?"],
            ["In what region is the city where {a} is based?"],
            ["To which region does the headquarters city of {a} belong?"],
        ),
        "product.maker.hq": (
            ["In which city is the maker of {a} headquartered?", "Where is the company that makes {a} based?"],
            ["In what city is the firm that produces {a} based?"],
            ["Which city houses the headquarters of the manufacturer of {a}?"],
        ),
        "product.maker.founder": (
            ["Who founded the company that makes {a}?", "Who is the founder of the maker of {a}?"],
            ["Who set up the firm that produces {a}?"],
            ["Which person started the manufacturer of {a}?"],
        ),
        "product.maker.founder.birth_city": (
            [
                "In which city was the founder of the company that makes {a} born?",
                "Where was the person who founded the maker of {a} born?",
            ],
            ["What is the birthplace of the founder of the firm that produces {a}?"],
            ["Which city does the creator of the manufacturer of {a} come from?"],
        ),
        "event.organiser.founded": (
            ["When was the organiser of {a} founded?", "In what year was the organisation that ran {a} founded?"],
            ["When was the body that arranged {a} established?"],
            ["What is the founding year of the group that put together {a}?"],
        ),
        "event.host.region": (
            ["In which region is the city that hosted {a}?", "Which region was {a} held in?"],
            ["In what region was {a} staged?"],
            ["To which region does the host city of {a} belong?"],
        ),
        "person.studied_at.hq": (
            ["In which city is the institution where {a} studied?", "Where is the school that {a} attended based?"],
            ["In what city is the place where {a} was trained?"],
            ["Which city houses the institution that educated {a}?"],
        ),
        "cmp.org.founded": (
            ["Which was founded earlier, {a} or {b}?", "Which is older, {a} or {b}?"],
            ["Which was established first, {a} or {b}?"],
            ["Which came first: {a} or {b}?"],
        ),
        "cmp.person.birth_year": (
            ["Who was born first, {a} or {b}?", "Who is older, {a} or {b}?"],
            ["Which of {a} and {b} was born earlier?"],
            ["Who came into the world first: {a} or {b}?"],
        ),
        "cmp.city.population": (
            ["Which city has more inhabitants, {a} or {b}?", "Which is bigger by population, {a} or {b}?"],
            ["Which has the larger population, {a} or {b}?"],
            ["Where do more people live: {a} or {b}?"],
        ),
        "cmp.product.price": (
            ["Which costs more, {a} or {b}?", "Which is more expensive, {a} or {b}?"],
            ["Which has the higher price, {a} or {b}?"],
            ["Which is pricier: {a} or {b}?"],
        ),
        "arith.founder_age": (
            [
                "How many years after the birth of its founder was {a} founded?",
                "How old was the founder of {a} in the year it was founded?",
            ],
            ["How many years passed between the birth of {a}'s founder and the founding of {a}?"],
            ["How many years had the creator of {a} lived when {a} was founded?"],
        ),
        "arith.launch_gap": (
            [
                "How many years after its maker was founded was {a} launched?",
                "How many years passed between the founding of the maker of {a} and its launch?",
            ],
            ["How long after its producer was established was {a} released, in years?"],
            ["In years, how long after the founding of its manufacturer did {a} debut?"],
        ),
        "arith.event_gap": (
            ["How many years apart were {a} and {b}?", "How many years separate {a} and {b}?"],
            ["How many years lay between {a} and {b}?"],
            ["What is the gap, in years, between {a} and {b}?"],
        ),
        "arith.employees": (
            ["How many more people work at {a} than at {b}?", "How many more employees does {a} have than {b}?"],
            ["By how many people does the staff of {a} exceed that of {b}?"],
            ["What is the difference between the workforces of {a} and {b}?"],
        ),
    },
)

# ---------------------------------------------------------------------------------------------------------
# The world


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
        onsets = [r.choice(_ONSETS)] + [r.choice(_SIMPLE_ONSETS) for _ in range(syllables - 1)]
        word = "".join(o + r.choice(_VOWELS) for o in onsets)
        return (word + (ending if ending is not None else r.choice(_CODAS))).capitalize()

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
        return (r.choice(_ONSETS) + r.choice(_VOWELS) + r.choice(_SIMPLE_ONSETS) + r.choice(_GIVEN_ENDS)).capitalize()


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

    regions = [f"the {names.stem()} {rng.choice(_REGION_KINDS)}" for _ in range(max(3, n_orgs // 4))]
    cities = []
    for _ in range(max(4, n_orgs * 2 // 3)):
        stem = names.stem(ending=rng.choice(_CITY_ENDS))
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
        kinds = [_INSTITUTE_KINDS if i % 3 == 0 else _COMPANY_KINDS]
        if rng.random() < 0.3:  # a sibling organisation with the same stem (a distractor)
            kinds.append(_COMPANY_KINDS if kinds[0] is _INSTITUTE_KINDS else _INSTITUTE_KINDS)
        for pool in kinds:
            o = add("org", f"{stem} {rng.choice(pool)}", stem)
            o.facts["kind"] = Fact("institute" if pool is _INSTITUTE_KINDS else "company", "", [])
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
        model = rng.choice([w for w in _MODEL_WORDS if w not in product_lines[stem]])
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
        ev = add("event", f"the {stem} {rng.choice(_EVENT_KINDS)}", stem)
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


# ---------------------------------------------------------------------------------------------------------
# Documents


def write_documents(rng: random.Random, split: str, world: dict[str, Entity]) -> list[dict]:
    """2-3 documents per entity (2 for cities and products); each fact in one, a third of them in two."""
    docs = []
    for e in world.values():
        kinds = _DOC_KINDS[e.type][: 2 if e.type in ("city", "product") else rng.randint(2, 3)]
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


# ---------------------------------------------------------------------------------------------------------
# Questions

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
_TYPE_WEIGHTS = {"single_hop": 0.4, "multi_hop": 0.3, "comparison": 0.15, "arithmetic": 0.15}


@dataclass
class _Question:
    qtype: str
    kind: str
    names: dict[str, str]
    answer: str
    aliases: list[str]
    evidence: list[tuple[Entity, str]]  # (entity, fact) in reasoning order
    subject: Entity
    hops: int = 1  # facts that must be chained (a comparison or a difference of two facts is one hop)
    operands: list[int] = field(default_factory=list)


def _candidates(rng: random.Random, world: dict[str, Entity]) -> dict[str, list[_Question]]:
    by_type: dict[str, list[Entity]] = {}
    for e in world.values():
        by_type.setdefault(e.type, []).append(e)
    out: dict[str, list[_Question]] = {k: [] for k in _TYPE_WEIGHTS}
    for e in world.values():
        for key, f in e.facts.items():
            out["single_hop"].append(
                _Question(f"{e.type}.{key}", "single_hop", {"a": e.name}, f.answer, f.aliases, [(e, key)], e)
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
                _Question(qtype, "multi_hop", {"a": e.name}, f.answer, f.aliases, evidence, e, hops=len(path))
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
                _Question(qtype, "comparison", {"a": a.name, "b": b.name}, win.label, [], [(a, key), (b, key)], a)
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


def _arith(qtype: str, names: dict[str, str], subject: Entity, evidence: list[tuple[Entity, str]]) -> _Question:
    """A difference of two numeric facts; with a bridge fact (founder, maker) it takes two hops."""
    values = [e.facts[k].number for e, k in evidence if e.facts[k].number is not None]
    diff = values[0] - values[1]
    years = qtype != "arith.employees"
    return _Question(
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


def _needs_two_documents(q: _Question, normalized_docs: list[str]) -> bool:
    """No single document mentions both the question's subject and its answer (as whole words)."""
    subject = f" {normalize_text(q.subject.label)} "
    answers = [f" {normalize_text(a)} " for a in [q.answer, *q.aliases] if normalize_text(a)]
    return not any(subject in d and any(a in d for a in answers) for d in normalized_docs)


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
    candidates = _candidates(rng, world)
    normalized_docs = [f" {normalize_text(d['text'])} " for d in docs]
    kinds = list(_TYPE_WEIGHTS)
    questions: list[dict] = []
    seen: set[str] = set()
    with progress(n, f"knowledge_base {split}") as advance:
        while len(questions) < n:
            open_kinds = [k for k in kinds if candidates[k]]
            if not open_kinds:
                raise too_few("knowledge_base", split, len(questions), n, "raise entities= or ask for fewer")
            kind = rng.choices(open_kinds, weights=[_TYPE_WEIGHTS[k] for k in open_kinds])[0]
            q = candidates[kind].pop()
            if q.kind == "multi_hop" and not _needs_two_documents(q, normalized_docs):
                continue
            tid, template = QUESTION_TEMPLATES.pick(rng, q.qtype, split)
            text = fill(template, **q.names)
            if text in seen:
                continue
            seen.add(text)
            questions.append(_record(split, len(questions), q, tid, text, world))
            advance(1)
    return {"items": questions, "documents": docs}


def _record(split: str, index: int, q: _Question, tid: str, text: str, world: dict[str, Entity]) -> dict:
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
