"""Multi-step arithmetic word problems with exact answers, PAL programs and CoT rationales (GSM8K-like).

A problem is built as a small straight-line program: *givens* (numbers stated in the question) and
*steps* (one arithmetic expression each, over earlier variables). The same steps produce, at once, the
reference PAL program (`def solution(): ... return result`), the chain-of-thought rationale (one line per
step, then "The answer is X."), and the exact answer (evaluated with fractions, so it is never a float
artefact). The number of operations (2-6) is counted from the program itself.

Eight families cover the skills of grade-school math: inventories (how many are left), shopping
(prices, discounts, change), travel and filling rates with unit conversion, schedules (time
differences), comparisons, savings (how many are needed, rounding up), wages with percentages, and
recipe scaling. `math_word_hard` is the same task with 5-9 digit numbers (like GSM-Hard), where mental
arithmetic fails but a program does not.

Splits share no template (each is owned by one split), no name or object (position-partitioned pools)
and no number pattern (the sorted numbers of a question hash to exactly one split).
"""

from __future__ import annotations

import ast
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

from lmstack.data.tasks.answers import FINAL_ANSWER_PREFIX, answer_value, format_number
from lmstack.data.tasks.common import (
    Templates,
    check_split,
    draw_distinct,
    fill,
    hash_split,
    number_signature,
    numbers_in,
    pool_split,
    split_rng,
)

# ---------------------------------------------------------------------------------------------------------
# Pools. Every string appears in exactly one pool; each pool is split 3:1:1 by position (see pool_split).


def _pool(text: str) -> list[str]:
    """A comma-separated pool written compactly."""
    return [x.strip() for x in text.split(",")]


# (name, pronoun); pronouns she/he.
NAMES = [
    tuple(x.split(":"))
    for x in _pool(
        "Mia:she, Omar:he, Priya:she, Lucas:he, Hana:she, Diego:he, Zara:she, Felix:he, Amara:she, Tomas:he, "
        "Leila:she, Kenji:he, Sofia:she, Arjun:he, Nadia:she, Mateo:he, Ingrid:she, Kwame:he, Elena:she, "
        "Rafael:he, Yuki:she, Samir:he, Clara:she, Jonas:he, Aisha:she, Pablo:he, Freya:she, Malik:he, Rosa:she, "
        "Ivan:he, Noor:she, Hugo:he, Greta:she, Tariq:he, Lucia:she, Emil:he, Fatima:she, Nikolai:he, Chloe:she, "
        "Ravi:he, Maren:she, Andre:he, Keiko:she, Bruno:he, Salma:she, Oscar:he, Tessa:she, Yusuf:he, Vera:she, "
        "Dmitri:he, Imani:she, Marco:he, Astrid:she, Kofi:he, Lena:she, Hamid:he, Paula:she, Soren:he, Mei:she, "
        "Anton:he, Carmen:she, Elias:he, Dalia:she, Viktor:he, Anika:she, Jamal:he, Beatriz:she, Lars:he, "
        "Selin:she, Tobias:he, Ruth:she, Idris:he, Olga:she, Caleb:he, Jana:she, Mikael:he, Noemi:she, Farid:he, "
        "Ayla:she, Luca:he, Wren:she, Santiago:he, Esme:she, Bilal:he, Thea:she, Nico:he, Lina:she, Rohan:he, "
        "Ada:she, Otto:he"
    )
]
ITEMS = _pool(
    "stickers, marbles, seashells, postcards, pencils, buttons, beads, stamps, crayons, trading cards, "
    "ribbons, badges, candles, keychains, pebbles, feathers, magnets, comics, bottle caps, paper cranes, "
    "erasers, lollipops, apples, oranges, lemons, plums, peaches, tomatoes, potatoes, carrots, eggs, walnuts, "
    "chestnuts, acorns, pinecones, toy cars, dice, balloons, bookmarks, hair clips"
)
GOODS = _pool(
    "notebooks, pens, mugs, scarves, posters, jigsaw puzzles, desk lamps, towels, plates, bowls, sketchbooks, "
    "batteries, light bulbs, flower pots, picture frames, hats, water bottles, backpacks, umbrellas, "
    "cushions, rulers, paintbrushes, jars of honey, loaves of bread, bags of rice, cartons of milk, packets "
    "of seeds, tins of paint, rolls of tape, spools of thread"
)
VEHICLES = _pool(
    "train, bus, ferry, cyclist, truck, tram, van, motorbike, delivery drone, coach, barge, sailboat, runner, "
    "hiker, cargo ship"
)
PLACES = _pool(
    "the library, the bakery, the museum, the swimming pool, the post office, the pharmacy, the bookshop, the "
    "gym, the zoo, the farmers' market, the cinema, the art gallery, the ice rink, the repair shop, the "
    "garden centre"
)
ACTIVITIES = _pool(
    "piano practice, chess, painting, gardening, reading, cycling, knitting, swimming, juggling, pottery, "
    "drawing, yoga, baking, woodwork, calligraphy"
)
GOALS = _pool(
    "a bicycle, a guitar, a tablet, a telescope, a camera, a skateboard, a keyboard, a tent, a microscope, a "
    "pair of skates, a sewing machine, a chess set, a scooter, a kayak, a violin"
)
DISHES = _pool(
    "pancakes, dumplings, biscuits, meatballs, flatbreads, waffles, scones, tortillas, crepes, omelettes, "
    "rice cakes, spring rolls, cupcakes, brownies, croissants"
)
INGREDIENTS = _pool(
    "flour, sugar, butter, rice, oats, cheese, cocoa, almonds, yoghurt, semolina, cornmeal, raisins, lentils, "
    "spinach, cream"
)
POOLS: dict[str, list[str]] = {
    "name": [n for n, _ in NAMES],
    "item": ITEMS,
    "good": GOODS,
    "vehicle": VEHICLES,
    "place": PLACES,
    "activity": ACTIVITIES,
    "goal": GOALS,
    "dish": DISHES,
    "ingredient": INGREDIENTS,
}
_PRONOUNS = {"she": ("she", "her", "her"), "he": ("he", "him", "his")}

# ---------------------------------------------------------------------------------------------------------
# Templates: slot -> (train, validation, test). Fields: {name} {pron} {obj} {poss} of the main person.

TEMPLATES = Templates(
    "math",
    {
        "inventory.start": (
            ["{name} has {n} {item}.", "{name} starts the week with {n} {item}."],
            ["At first, {name} owns {n} {item}."],
            ["There are {n} {item} in {name}'s collection."],
        ),
        "inventory.gain": (
            ["{pron} buys {n} more {item}.", "Later, {pron} is given another {n} {item}."],
            ["{pron} then picks up {n} extra {item} at a market."],
            ["A neighbour hands {obj} {n} more {item}."],
        ),
        "inventory.lose": (
            ["{pron} gives {n} of the {item} to {friend}.", "{pron} loses {n} {item} on the way home."],
            ["{friend} borrows {n} {item} and never returns them."],
            ["{pron} donates {n} {item} to a school fair."],
        ),
        "inventory.packs": (
            [
                "{pron} buys {packs} packs of {item} with {per} {item} in each pack.",
                "Then {pron} orders {packs} boxes that each hold {per} {item}.",
            ],
            ["{pron} receives {packs} bundles of {per} {item} each."],
            ["A delivery brings {obj} {packs} crates, every crate containing {per} {item}."],
        ),
        "inventory.share": (
            [
                "{pron} splits all {poss} {item} equally into {k} bags and keeps just one bag.",
                "{pron} divides the {item} into {k} equal groups and keeps one group for {obj}self.",
            ],
            ["{pron} deals the {item} evenly into {k} heaps and holds on to a single heap."],
            ["{pron} sorts the {item} into {k} equal piles and keeps only one pile."],
        ),
        "inventory.percent": (
            [
                "{pron} sells {p}% of the {item} {pron} has at that point.",
                "Next, {p}% of {poss} {item} are given away.",
            ],
            ["{pron} trades away {p}% of the {item} {pron} currently owns."],
            ["A storm ruins {p}% of the {item} {pron} holds at that moment."],
        ),
        "inventory.question": (
            ["How many {item} does {name} have now?", "How many {item} are left with {name} at the end?"],
            ["What is the number of {item} {name} ends up with?"],
            ["In the end, how many {item} does {name} own?"],
        ),
        "shopping.buy1": (
            [
                "{name} buys {c} {item} for {price} each.",
                "At the market, {name} picks up {c} {item} that cost {price} apiece.",
            ],
            ["{name} orders {c} {item}, and each one is priced at {price}."],
            ["Each of the {c} {item} that {name} chooses costs {price}."],
        ),
        "shopping.buy2": (
            [
                "{pron} also buys {c} {item} at {price} each.",
                "{pron} adds {c} {item} priced at {price} each to the basket.",
            ],
            ["On top of that, {pron} gets {c} {item} for {price} apiece."],
            ["{pron} then takes {c} {item}, which sell for {price} each."],
        ),
        "shopping.discount": (
            ["The shop takes {p}% off the whole bill.", "{name} has a coupon for {p}% off the total."],
            ["At the till, a {p}% discount is applied to everything."],
            ["A loyalty card cuts {p}% from the final price."],
        ),
        "shopping.pay": (
            ["{pron} pays with {bill}.", "{pron} hands the cashier {bill}."],
            ["{pron} gives the seller {bill} in cash."],
            ["{pron} settles the bill using {bill}."],
        ),
        "shopping.q_total": (
            ["How much does {name} spend in total?", "How many dollars does {name} pay altogether?"],
            ["What is the total amount {name} pays?"],
            ["How much money does the shopping cost {name}?"],
        ),
        "shopping.q_change": (
            ["How much change does {name} get back?", "How much money should {name} receive as change?"],
            ["What amount of change is returned to {name}?"],
            ["How many dollars come back to {name} as change?"],
        ),
        "travel.leg1": (
            [
                "A {vehicle} travels at {v} km per hour for {t} minutes.",
                "For {t} minutes, a {vehicle} moves at a steady {v} km per hour.",
            ],
            ["A {vehicle} keeps a speed of {v} km per hour during a {t}-minute trip."],
            ["Over {t} minutes, a {vehicle} covers ground at {v} km per hour."],
        ),
        "travel.leg2": (
            [
                "After that it goes at {v} km per hour for {h} hours.",
                "Then it speeds along at {v} km per hour for another {h} hours.",
            ],
            ["Next, it continues for {h} hours at {v} km per hour."],
            ["The second part of the trip lasts {h} hours at {v} km per hour."],
        ),
        "travel.q_km": (
            [
                "How many kilometres does the {vehicle} travel in total?",
                "What total distance, in kilometres, does the {vehicle} cover?",
            ],
            ["How far does the {vehicle} go altogether, in kilometres?"],
            ["Find the full distance of the {vehicle}'s journey in kilometres."],
        ),
        "travel.q_m": (
            [
                "How many metres does the {vehicle} travel in total?",
                "What is the total distance of the {vehicle} in metres?",
            ],
            ["How far, in metres, does the {vehicle} go altogether?"],
            ["Express the whole distance of the {vehicle}'s journey in metres."],
        ),
        "travel.tank": (
            [
                "{name} fills a tank at {r} litres per minute, and the tank holds {c} litres.",
                "Water flows into {name}'s {c}-litre tank at {r} litres every minute.",
            ],
            ["A pump run by {name} delivers {r} litres per minute into a tank with room for {c} litres."],
            ["{name}'s hose adds {r} litres a minute to a tank whose capacity is {c} litres."],
        ),
        "travel.tank_start": (
            ["The tank already contains {c0} litres.", "There are {c0} litres in the tank before {pron} starts."],
            ["Before filling starts, {c0} litres are already inside."],
            ["It begins with {c0} litres of water in it."],
        ),
        "travel.q_tank": (
            ["How many hours does it take to fill the tank?", "How many hours pass before the tank is full?"],
            ["How long, in hours, until the tank is full?"],
            ["In hours, how long does filling the tank take?"],
        ),
        "schedule.open": (
            [
                "{place} opens at {t1} and closes at {t2}.",
                "Every day {place} lets visitors in at {t1} and locks up at {t2}.",
            ],
            ["The opening hours of {place} run from {t1} to {t2}."],
            ["{place} is open from {t1} until {t2} each day."],
        ),
        "schedule.days": (
            ["It keeps these hours for {d} days in a row.", "This schedule is the same on {d} days of the week."],
            ["It follows this timetable {d} days a week."],
            ["The same hours apply on {d} days each week."],
        ),
        "schedule.q_day": (
            ["How many minutes is {place} open each day?", "For how many minutes a day is {place} open?"],
            ["How long, in minutes, does {place} stay open per day?"],
            ["What is the daily opening time of {place} in minutes?"],
        ),
        "schedule.q_days": (
            [
                "How many minutes is {place} open over those {d} days?",
                "In total, for how many minutes is {place} open across the {d} days?",
            ],
            ["How many minutes of opening time does {place} have in those {d} days?"],
            ["Over the {d} days, what is the total opening time of {place} in minutes?"],
        ),
        "schedule.mon": (
            [
                "{name} spends {h} hours and {m} minutes on {activity} on Monday.",
                "On Monday, {name} does {activity} for {h} hours and {m} minutes.",
            ],
            ["{name}'s Monday includes {h} hours and {m} minutes of {activity}."],
            ["{name} devotes {h} hours and {m} minutes to {activity} on Monday."],
        ),
        "schedule.tue": (
            ["On Tuesday {pron} spends {m2} minutes on it.", "{pron} adds {m2} minutes of it on Tuesday."],
            ["Tuesday's session lasts {m2} minutes."],
            ["On Tuesday the session is only {m2} minutes long."],
        ),
        "schedule.wed": (
            [
                "On Wednesday {pron} spends {k} times as long as on Tuesday.",
                "Wednesday's session is {k} times the length of Tuesday's.",
            ],
            ["On Wednesday {pron} keeps going for {k} times Tuesday's time."],
            ["Wednesday takes {k} times as many minutes as Tuesday did."],
        ),
        "schedule.q_practice": (
            [
                "How many minutes does {name} spend on {activity} over these days?",
                "In total, how many minutes of {activity} does {name} do?",
            ],
            ["What is the total time, in minutes, {name} spends on {activity}?"],
            ["Altogether, how many minutes go into {activity} for {name}?"],
        ),
        "compare.a": (
            ["{name} collects {a} {item} every day for {d} days.", "For {d} days, {name} gathers {a} {item} a day."],
            ["{name} picks up {a} {item} daily over {d} days."],
            ["Across {d} days, {name} adds {a} {item} to a pile each day."],
        ),
        "compare.b": (
            ["{name2} collects {b} {item} every day for {d} days.", "{name2} gathers {b} {item} a day for {d} days."],
            ["Meanwhile, {name2} finds {b} {item} per day during {d} days."],
            ["{name2} manages {b} {item} each day for {d} days."],
        ),
        "compare.bonus": (
            ["{name} also finds {x} more {item} in a drawer.", "On top of that, {name} wins {x} {item} in a raffle."],
            ["Later, {name} is handed {x} extra {item}."],
            ["{name} then discovers another {x} {item} under the bed."],
        ),
        "compare.loss": (
            ["{name2} later gives away {y} of them.", "Afterwards, {name2} loses {y} {item}."],
            ["{name2} then trades {y} {item} for a snack."],
            ["A few days later {name2} misplaces {y} {item}."],
        ),
        "compare.q_more": (
            ["How many more {item} does {big} have than {small}?", "By how many {item} does {big} beat {small}?"],
            ["How many extra {item} does {big} end up with compared with {small}?"],
            ["What is the difference between the numbers of {item} that {big} and {small} have?"],
        ),
        "compare.q_total": (
            [
                "How many {item} do {name} and {name2} have together?",
                "What is the combined number of {item} collected by {name} and {name2}?",
            ],
            ["Taken together, how many {item} do {name} and {name2} own?"],
            ["How many {item} do the two of them, {name} and {name2}, hold in all?"],
        ),
        "compare.q_times": (
            [
                "How many times as many {item} as {small} does {big} have?",
                "{big} has how many times the {item} of {small}?",
            ],
            ["By what factor does {big}'s number of {item} exceed {small}'s?"],
            ["How many times larger is {big}'s count of {item} than {small}'s?"],
        ),
        "savings.goal": (
            ["{name} wants to buy {goal} that costs {price}.", "{name} is saving up for {goal} priced at {price}."],
            ["{name} has {poss} eye on {goal}, which sells for {price}."],
            ["{name} dreams of owning {goal} worth {price}."],
        ),
        "savings.saved": (
            ["{pron} has already saved {saved}.", "{pron} already has {saved} in a piggy bank."],
            ["So far {pron} has put aside {saved}."],
            ["{poss} savings account holds {saved} already."],
        ),
        "savings.gift": (
            ["{poss} grandmother gives {obj} {gift} for the purchase.", "An aunt adds {gift} to {poss} fund."],
            ["For {poss} birthday {pron} receives {gift} towards it."],
            ["A relative chips in {gift}."],
        ),
        "savings.weekly": (
            ["{pron} saves {s} every week.", "Each week {pron} puts away {s}."],
            ["{pron} manages to set aside {s} per week."],
            ["Every week another {s} goes into {poss} fund."],
        ),
        "savings.allowance": (
            [
                "{pron} gets {a} of pocket money each week and spends {sp} of it, saving the rest.",
                "Every week {pron} earns {a} and spends {sp}, keeping the remainder.",
            ],
            ["Out of a weekly allowance of {a}, {pron} spends {sp} and saves what is left."],
            ["{pron} receives {a} weekly, uses {sp} for snacks, and saves the rest."],
        ),
        "savings.q_weeks": (
            ["How many weeks will it take {name} to have enough money?", "After how many weeks can {name} afford it?"],
            ["How many weeks must {name} keep saving?"],
            ["What is the smallest number of weeks before {name} can buy it?"],
        ),
        "savings.need": (
            ["{name} needs {n} {item} for a party.", "For a class project, {name} needs {n} {item}."],
            ["{name} must gather {n} {item} for a fair."],
            ["A craft plan calls for {n} {item}, and {name} is in charge."],
        ),
        "savings.have": (
            ["{pron} already has {h} of them.", "{pron} finds {h} at home."],
            ["{h} of them are already in {poss} cupboard."],
            ["{pron} owns {h} already."],
        ),
        "savings.friend": (
            ["{friend} brings {f} more.", "{friend} contributes another {f}."],
            ["{friend} lends {obj} {f} of them."],
            ["{friend} drops off {f} extra."],
        ),
        "savings.pack": (
            ["The {item} are sold in packs of {c}.", "A shop sells the {item} only in packs of {c}."],
            ["Each pack in the store contains {c} {item}."],
            ["The store packages the {item} in sets of {c}."],
        ),
        "savings.q_packs": (
            ["How many packs must {name} buy?", "What is the least number of packs {name} needs to buy?"],
            ["How many packs does {name} have to purchase?"],
            ["How many packs should {name} get at minimum?"],
        ),
        "wages.rate": (
            ["{name} earns {w} per hour.", "{name}'s job pays {w} an hour."],
            ["{name} is paid {w} for every hour of work."],
            ["For each hour worked, {name} receives {w}."],
        ),
        "wages.weekdays": (
            ["{pron} works {h} hours a day from Monday to Friday.", "{pron} puts in {h} hours on each weekday."],
            ["On every weekday, {pron} works for {h} hours."],
            ["From Monday through Friday, {pron} works {h} hours daily."],
        ),
        "wages.saturday": (
            ["On Saturday {pron} works {hs} more hours.", "{pron} also works {hs} hours on Saturday."],
            ["{pron} adds a {hs}-hour shift on Saturday."],
            ["Saturday brings another {hs} hours of work."],
        ),
        "wages.rent": (
            ["{pron} spends {p}% of the week's pay on rent.", "Rent takes {p}% of {poss} weekly earnings."],
            ["{p}% of the weekly pay goes to rent."],
            ["{pron} puts {p}% of each week's wages toward rent."],
        ),
        "wages.q_pay": (
            ["How much does {name} earn in a week?", "What are {name}'s total earnings for the week?"],
            ["How much money does {name} make in one week?"],
            ["Find {name}'s pay for the whole week."],
        ),
        "wages.q_left": (
            ["How much of the week's pay is left after rent?", "How much money does {name} keep after paying rent?"],
            ["After rent, how much of {poss} weekly pay remains?"],
            ["What is left of {name}'s weekly wages once rent is paid?"],
        ),
        "recipe.base": (
            [
                "A recipe for {s} {dish} uses {g} grams of {ingredient}.",
                "To make {s} {dish}, you need {g} grams of {ingredient}.",
            ],
            ["{g} grams of {ingredient} are enough for {s} {dish}."],
            ["A batch of {s} {dish} calls for {g} grams of {ingredient}."],
        ),
        "recipe.want": (
            ["{name} wants to make {t} {dish}.", "{name} is preparing {t} {dish} for a party."],
            ["{name} needs to cook {t} {dish}."],
            ["For a picnic, {name} will make {t} {dish}."],
        ),
        "recipe.has": (
            ["{pron} already has {x} grams of {ingredient}.", "There are {x} grams of {ingredient} in {poss} kitchen."],
            ["{poss} pantry holds {x} grams of {ingredient}."],
            ["{pron} has {x} grams of {ingredient} at home."],
        ),
        "recipe.q_g": (
            ["How many grams of {ingredient} does {name} need?", "How much {ingredient}, in grams, is needed?"],
            ["What weight of {ingredient} in grams will {name} use?"],
            ["In grams, how much {ingredient} does the plan require?"],
        ),
        "recipe.q_kg": (
            ["How many kilograms of {ingredient} does {name} need?", "How much {ingredient}, in kilograms, is needed?"],
            ["What weight of {ingredient} in kilograms will {name} use?"],
            ["In kilograms, how much {ingredient} does the plan require?"],
        ),
        "recipe.q_buy_g": (
            [
                "How many more grams of {ingredient} must {name} buy?",
                "How many grams of {ingredient} are still missing?",
            ],
            ["What amount of {ingredient}, in grams, does {name} still have to get?"],
            ["In grams, how much extra {ingredient} should {name} buy?"],
        ),
        "recipe.q_buy_kg": (
            [
                "How many more kilograms of {ingredient} must {name} buy?",
                "How many kilograms of {ingredient} are still missing?",
            ],
            ["What amount of {ingredient}, in kilograms, does {name} still have to get?"],
            ["In kilograms, how much extra {ingredient} should {name} buy?"],
        ),
    },
)

# ---------------------------------------------------------------------------------------------------------
# The builder: records question sentences, program lines, rationale lines and exact values together.


class _Retry(Exception):
    """The random draw cannot make a clean problem (e.g. a non-terminating decimal); draw again."""


@dataclass
class _Person:
    name: str
    pron: str
    obj: str
    poss: str

    def fields(self) -> dict[str, str]:
        return {"name": self.name, "pron": self.pron, "obj": self.obj, "poss": self.poss}


def _exact(node: ast.AST, env: dict[str, Fraction]) -> Fraction:
    """Evaluate a step expression exactly (constants read as decimals, so 2.75 is 11/4, not a float)."""
    if isinstance(node, ast.Expression):
        return _exact(node.body, env)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(repr(node.value))
    if isinstance(node, ast.Name):
        return env[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_exact(node.operand, env)
    if isinstance(node, ast.BinOp):
        a, b = _exact(node.left, env), _exact(node.right, env)
        ops = {ast.Add: a.__add__, ast.Sub: a.__sub__, ast.Mult: a.__mul__, ast.Div: a.__truediv__}
        return ops[type(node.op)](b)
    if isinstance(node, ast.Call) and ast.unparse(node.func) in ("math.ceil", "math.floor"):
        inner = _exact(node.args[0], env)
        return Fraction(math.ceil(inner) if ast.unparse(node.func) == "math.ceil" else math.floor(inner))
    raise ValueError(f"unsupported expression: {ast.unparse(node)}")


def _show(expr: str, env: dict[str, Fraction]) -> str:
    """The expression with every variable replaced by its value, for the rationale: 'a + b' -> '45 + 12'."""
    tree = ast.parse(expr, mode="eval")
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            node.id = format_number(env[node.id])
    return ast.unparse(tree)


def _decimals_ok(x: Fraction, places: int) -> bool:
    return (x * 10**places).denominator == 1


def money(x: Fraction | int) -> str:
    """'$12' or '$12.50'."""
    x = Fraction(x)
    return f"${x.numerator}" if x.denominator == 1 else f"${float(x):.2f}"


class _Builder:
    def __init__(self, rng: random.Random, split: str, large: bool):
        self.rng, self.split, self.large = rng, split, large
        self.sentences: list[str] = []
        self.template_ids: list[str] = []
        self.entities: list[str] = []
        self.lines: list[tuple[str, str]] = []
        self.rationale: list[str] = []
        self.env: dict[str, Fraction] = {}

    # -- random draws ------------------------------------------------------------------------------------
    def qty(self, lo: int, hi: int) -> int:
        """A main quantity: small in the normal task, 5-9 digits in the hard one."""
        if self.large:
            digits = self.rng.randint(5, 9)
            return self.rng.randint(10 ** (digits - 1), 10**digits - 1)
        return self.rng.randint(lo, hi)

    def count(self, lo: int, hi: int) -> int:
        """A small multiplier (packs, days, people): the same in both variants."""
        return self.rng.randint(lo, hi)

    def price(self, lo: int, hi: int) -> Fraction:
        if self.large:
            return Fraction(self.qty(lo, hi))
        return Fraction(self.rng.randint(lo, hi)) + Fraction(self.rng.choice([0, 0, 25, 50, 75]), 100)

    def pick(self, pool: str) -> str:
        choices = [x for x in pool_split(POOLS[pool], self.split) if x not in self.entities]
        value = self.rng.choice(choices)
        self.entities.append(value)
        return value

    def person(self) -> _Person:
        genders = dict(NAMES)
        name = self.pick("name")
        pron, obj, poss = _PRONOUNS[genders[name]]
        return _Person(name, pron, obj, poss)

    # -- recording ---------------------------------------------------------------------------------------
    def say(self, slot: str, **fields: object) -> None:
        tid, template = TEMPLATES.pick(self.rng, slot, self.split)
        self.template_ids.append(tid)
        self.sentences.append(fill(template, **fields))

    def _var(self, name: str) -> str:
        var, k = name, 2
        while var in self.env:
            var, k = f"{name}_{k}", k + 1
        return var

    def given(self, name: str, value: int | Fraction) -> str:
        var = self._var(name)
        self.env[var] = Fraction(value)
        self.lines.append((var, format_number(Fraction(value))))
        return var

    def compute(self, name: str, expr: str, text: str = "{calc} = {val}.", places: int = 3) -> str:
        """Add `name = expr`; `text` is its rationale line, with {calc} (the expression with values) and {val}."""
        var = self._var(name)
        tree = ast.parse(expr, mode="eval")
        value = _exact(tree, self.env)
        if value < 0 or not _decimals_ok(value, places):
            raise _Retry
        if isinstance(tree.body, ast.Call):  # a rounding step: show the division, then the rounding
            inner = tree.body.args[0]
            q = _exact(inner, self.env)
            shown = format_number(q) if _decimals_ok(q, 3) else f"about {format_number(q, 2)}"
            calc = f"{_show(ast.unparse(inner), self.env)} = {shown}"
        else:
            calc = _show(expr, self.env)
        val = money(value)[1:] if places == 2 else format_number(value)
        self.rationale.append(text.replace("{calc}", calc).replace("{val}", val))
        self.env[var] = value
        self.lines.append((var, expr))
        return var

    def value(self, var: str) -> Fraction:
        return self.env[var]


# ---------------------------------------------------------------------------------------------------------
# Families. Each draws a problem into the builder; question sentences come only from TEMPLATES.


def _inventory(b: _Builder) -> None:
    p, item = b.person(), b.pick("item")
    friend = b.person()
    start = b.qty(15, 120)
    b.say("inventory.start", n=start, item=item, **p.fields())
    cur = b.given("start_count", start)
    target, ops = b.rng.randint(2, 6), 0
    for _ in range(40):
        if ops >= target:
            break
        room, have = target - ops, b.value(cur)
        kind = b.rng.choice(["gain", "lose", "share"] + ["packs"] * (room >= 2) + ["percent"] * (room >= 3))
        if kind == "gain":
            n = b.qty(3, 60)
            b.say("inventory.gain", n=n, item=item, **p.fields())
            got = b.given("received", n)
            cur = b.compute("after_receiving", f"{cur} + {got}", f"Adding {n} gives {{calc}} = {{val}} {item}.")
            ops += 1
        elif kind == "lose" and have >= 2:
            n = b.rng.randint(1, int(have) - 1) if not b.large else b.rng.randint(int(have) // 10, int(have) * 2 // 3)
            b.say("inventory.lose", n=n, item=item, friend=friend.name, **p.fields())
            lost = b.given("removed", n)
            cur = b.compute("after_removing", f"{cur} - {lost}", f"Taking away {n} leaves {{calc}} = {{val}} {item}.")
            ops += 1
        elif kind == "share":
            ks = [k for k in range(2, 11) if have % k == 0]
            if not ks:
                continue
            k = b.rng.choice(ks)
            b.say("inventory.share", k=k, item=item, **p.fields())
            groups = b.given("equal_groups", k)
            cur = b.compute("kept_share", f"{cur} / {groups}", f"One of {k} equal parts is {{calc}} = {{val}} {item}.")
            ops += 1
        elif kind == "packs":
            packs, per = b.count(2, 9), b.qty(4, 24)
            b.say("inventory.packs", packs=packs, per=per, item=item, **p.fields())
            n_packs, per_pack = b.given("packs", packs), b.given("per_pack", per)
            total = b.compute("from_packs", f"{n_packs} * {per_pack}", f"The packs hold {{calc}} = {{val}} {item}.")
            cur = b.compute("after_packs", f"{cur} + {total}", f"Now {p.name} has {{calc}} = {{val}} {item}.")
            ops += 2
        elif kind == "percent":
            ps = [q for q in (10, 20, 25, 30, 40, 50, 60, 75, 80) if have * q % 100 == 0]
            if not ps:
                continue
            pct = b.rng.choice(ps)
            b.say("inventory.percent", p=pct, item=item, **p.fields())
            percent = b.given("percent_removed", pct)
            gone = b.compute("removed_share", f"{cur} * {percent} / 100", f"{pct}% of them is {{calc}} = {{val}}.")
            cur = b.compute("after_percent", f"{cur} - {gone}", f"That leaves {{calc}} = {{val}} {item}.")
            ops += 3
    if ops < 2:
        raise _Retry
    b.say("inventory.question", item=item, **p.fields())


def _shopping(b: _Builder) -> None:
    p = b.person()
    second, discount, change = b.rng.choice([(0, 0, 1), (1, 0, 0), (1, 0, 1), (0, 1, 0), (0, 1, 1), (1, 1, 0)])
    item1 = b.pick("good")
    c1, p1 = b.count(2, 9), b.price(1, 25)
    b.say("shopping.buy1", c=c1, item=item1, price=money(p1), **p.fields())
    slug1 = _slug(item1)
    cost = b.compute(
        f"{slug1}_cost",
        f"{b.given(f'{slug1}_bought', c1)} * {b.given(f'{slug1}_price', p1)}",
        f"The {item1} cost {{calc}} = ${{val}}.",
        places=2,
    )
    if second:
        item2 = b.pick("good")
        c2, p2 = b.count(2, 9), b.price(1, 25)
        b.say("shopping.buy2", c=c2, item=item2, price=money(p2), **p.fields())
        slug2 = _slug(item2)
        cost2 = b.compute(
            f"{slug2}_cost",
            f"{b.given(f'{slug2}_bought', c2)} * {b.given(f'{slug2}_price', p2)}",
            f"The {item2} cost {{calc}} = ${{val}}.",
            places=2,
        )
        cost = b.compute("total_cost", f"{cost} + {cost2}", "Together that is {calc} = ${val}.", places=2)
    if discount:
        pct = b.rng.choice([10, 20, 25, 50])
        b.say("shopping.discount", p=pct, **p.fields())
        percent = b.given("discount_percent", pct)
        off = b.compute("discount", f"{cost} * {percent} / 100", "The discount is {calc} = ${val}.", places=2)
        cost = b.compute("price_after_discount", f"{cost} - {off}", "After the discount: {calc} = ${val}.", places=2)
    if change:
        total = b.value(cost)
        if b.large:
            step = 10 ** (len(str(int(total))) - 1)
            bill = (int(total) // step + 1) * step
        else:
            bill = min(x for x in (10, 20, 50, 100, 200, 500, 1000) if x > total)
        b.say("shopping.pay", bill=money(bill), **p.fields())
        paid = b.given("paid", bill)
        b.compute("change", f"{paid} - {cost}", "The change is {calc} = ${val}.", places=2)
        b.say("shopping.q_change", **p.fields())
    else:
        b.say("shopping.q_total", **p.fields())


def _travel(b: _Builder) -> None:
    if b.rng.random() < 0.6:
        vehicle = b.pick("vehicle")
        v, t = b.qty(3, 24) * (1 if b.large else 5), 15 * b.count(1, 11)
        b.say("travel.leg1", vehicle=vehicle, v=v, t=t)
        speed, minutes = b.given("speed_kmh", v), b.given("minutes", t)
        hours = b.compute("hours", f"{minutes} / 60", f"{t} minutes is {{calc}} = {{val}} hours.")
        dist = b.compute("first_distance", f"{speed} * {hours}", "The first part covers {calc} = {val} km.")
        if b.rng.random() < 0.5:
            v2, h2 = b.qty(3, 24) * (1 if b.large else 5), b.rng.choice([1, 1.5, 2, 2.5, 3, 4])
            b.say("travel.leg2", v=v2, h=format_number(Fraction(str(h2))))
            speed2, hours2 = b.given("second_speed_kmh", v2), b.given("second_hours", Fraction(str(h2)))
            dist2 = b.compute("second_distance", f"{speed2} * {hours2}", "The second part covers {calc} = {val} km.")
            dist = b.compute("total_km", f"{dist} + {dist2}", "In total that is {calc} = {val} km.")
        if b.rng.random() < 0.4:
            b.compute("total_metres", f"{dist} * 1000", "In metres: {calc} = {val} m.")
            b.say("travel.q_m", vehicle=vehicle)
        else:
            b.say("travel.q_km", vehicle=vehicle)
    else:
        p = b.person()
        r = b.qty(4, 40)
        hours = Fraction(b.rng.choice([50, 75, 100, 125, 150, 200, 250, 300, 400]), 100)
        fill_litres = r * int(hours * 60)
        start = b.qty(10, 200) if b.rng.random() < 0.5 else 0
        b.say("travel.tank", r=r, c=fill_litres + start, **p.fields())
        capacity, rate = b.given("capacity_litres", fill_litres + start), b.given("litres_per_minute", r)
        if start:
            b.say("travel.tank_start", c0=start, **p.fields())
            already = b.given("already_litres", start)
            capacity = b.compute("litres_to_add", f"{capacity} - {already}", "Still to fill: {calc} = {val} litres.")
        minutes = b.compute("minutes", f"{capacity} / {rate}", "At that rate it takes {calc} = {val} minutes.")
        b.compute("hours", f"{minutes} / 60", "In hours: {calc} = {val}.")
        b.say("travel.q_tank")


def _clock(h: int, m: int) -> str:
    return f"{h}:{m:02d}"


def _minutes_expr(hour: str, minute: str | None) -> str:
    return f"{hour} * 60 + {minute}" if minute else f"{hour} * 60"


def _schedule(b: _Builder) -> None:
    if b.rng.random() < 0.5:
        place = b.pick("place")
        h1, m1 = b.rng.randint(6, 11), 5 * b.rng.randint(0, 11)
        h2, m2 = b.rng.randint(13, 22), 5 * b.rng.randint(0, 11)
        b.say("schedule.open", place=place, t1=_clock(h1, m1), t2=_clock(h2, m2))
        oh, om = b.given("opening_hour", h1), (b.given("opening_minute", m1) if m1 else None)
        ch, cm = b.given("closing_hour", h2), (b.given("closing_minute", m2) if m2 else None)
        opens = b.compute("opens_at_minute", _minutes_expr(oh, om), "It opens {calc} = {val} minutes after midnight.")
        closes = b.compute(
            "closes_at_minute", _minutes_expr(ch, cm), "It closes {calc} = {val} minutes after midnight."
        )
        daily = b.compute("open_minutes_per_day", f"{closes} - {opens}", "Each day it is open {calc} = {val} minutes.")
        if b.rng.random() < 0.4:
            d = b.count(2, 7)
            b.say("schedule.days", d=d)
            days = b.given("days", d)
            b.compute("open_minutes_total", f"{daily} * {days}", f"Over {d} days: {{calc}} = {{val}} minutes.")
            b.say("schedule.q_days", place=place, d=d)
        else:
            b.say("schedule.q_day", place=place)
    else:
        p, activity = b.person(), b.pick("activity")
        h, m, m2 = b.count(1, 3), 5 * b.rng.randint(1, 11), 5 * b.rng.randint(4, 18)
        b.say("schedule.mon", h=h, m=m, activity=activity, **p.fields())
        monday = b.compute(
            "monday_minutes",
            f"{b.given('monday_hours', h)} * 60 + {b.given('monday_extra_minutes', m)}",
            "Monday is {calc} = {val} minutes.",
        )
        b.say("schedule.tue", m2=m2, **p.fields())
        tuesday = b.given("tuesday_minutes", m2)
        total = b.compute("total_minutes", f"{monday} + {tuesday}", "Monday and Tuesday make {calc} = {val} minutes.")
        if b.rng.random() < 0.5:
            k = b.count(2, 4)
            b.say("schedule.wed", k=k, **p.fields())
            wednesday = b.compute(
                "wednesday_minutes",
                f"{b.given('wednesday_factor', k)} * {tuesday}",
                "Wednesday is {calc} = {val} minutes.",
            )
            b.compute("all_minutes", f"{total} + {wednesday}", "All together: {calc} = {val} minutes.")
        b.say("schedule.q_practice", activity=activity, **p.fields())


def _compare(b: _Builder) -> None:
    p, q, item = b.person(), b.person(), b.pick("item")
    a, d1 = b.qty(2, 30), b.count(3, 14)
    bb, d2 = b.qty(2, 30), b.count(3, 14)
    b.say("compare.a", a=a, d=d1, item=item, name2=q.name, **p.fields())
    first = b.compute(
        "first_total",
        f"{b.given('first_per_day', a)} * {b.given('first_days', d1)}",
        f"{p.name} collects {{calc}} = {{val}} {item}.",
    )
    b.say("compare.b", b=bb, d=d2, item=item, name2=q.name, **p.fields())
    second = b.compute(
        "second_total",
        f"{b.given('second_per_day', bb)} * {b.given('second_days', d2)}",
        f"{q.name} collects {{calc}} = {{val}} {item}.",
    )
    if b.rng.random() < 0.4:
        x = b.qty(3, 40)
        b.say("compare.bonus", x=x, item=item, name2=q.name, **p.fields())
        first = b.compute(
            "first_final",
            f"{first} + {b.given('first_bonus', x)}",
            f"With the extra ones {p.name} has {{calc}} = {{val}}.",
        )
    if b.rng.random() < 0.4:
        have = int(b.value(second))
        y = b.rng.randint(1, max(1, have // 2))
        b.say("compare.loss", y=y, item=item, name2=q.name, **p.fields())
        second = b.compute(
            "second_final",
            f"{second} - {b.given('second_loss', y)}",
            f"After the loss {q.name} has {{calc}} = {{val}}.",
        )
    va, vb = b.value(first), b.value(second)
    if va == vb:
        raise _Retry
    (big, bv), (small, sv) = sorted([(p.name, first), (q.name, second)], key=lambda t: -b.value(t[1]))
    kind = b.rng.choice(["more", "more", "total", "times"])
    if kind == "times" and (b.value(bv) / b.value(sv)).denominator != 1:
        kind = "more"
    if kind == "more":
        b.compute("difference", f"{bv} - {sv}", f"{big} has {{calc}} = {{val}} more.")
        b.say("compare.q_more", big=big, small=small, item=item, name2=q.name, **p.fields())
    elif kind == "total":
        b.compute("together", f"{first} + {second}", "Together they have {calc} = {val}.")
        b.say("compare.q_total", item=item, name2=q.name, **p.fields())
    else:
        b.compute("ratio", f"{bv} / {sv}", f"{big} has {{calc}} = {{val}} times as many.")
        b.say("compare.q_times", big=big, small=small, item=item, name2=q.name, **p.fields())


def _savings(b: _Builder) -> None:
    p = b.person()
    if b.rng.random() < 0.6:
        goal = b.pick("goal")
        price = b.qty(40, 400)
        saved = b.rng.randint(1, price // 2)
        b.say("savings.goal", goal=goal, price=money(price), **p.fields())
        b.say("savings.saved", saved=money(saved), **p.fields())
        left = b.compute(
            "still_needed",
            f"{b.given('price', price)} - {b.given('already_saved', saved)}",
            "Still needed: {calc} = ${val}.",
            places=2,
        )
        if b.rng.random() < 0.4:
            gift = b.rng.randint(1, max(1, int(b.value(left)) // 3))
            b.say("savings.gift", gift=money(gift), **p.fields())
            left = b.compute(
                "needed_after_gift", f"{left} - {b.given('gift', gift)}", "After the gift: {calc} = ${val}.", places=2
            )
        if b.rng.random() < 0.6:
            s = b.rng.randint(3, 40) if not b.large else price // b.rng.randint(5, 60) + 1
            b.say("savings.weekly", s=money(s), **p.fields())
            weekly = b.given("saved_per_week", s)
        else:
            allowance = b.rng.randint(10, 50) if not b.large else price // b.rng.randint(5, 60) + 50
            spend = b.rng.randint(1, allowance // 2)
            b.say("savings.allowance", a=money(allowance), sp=money(spend), **p.fields())
            weekly = b.compute(
                "saved_per_week",
                f"{b.given('allowance', allowance)} - {b.given('spent', spend)}",
                "Each week {pron} saves {calc} = ${val}.".replace("{pron}", p.pron),
                places=2,
            )
        if b.value(left) <= 0:
            raise _Retry
        b.compute("weeks", f"math.ceil({left} / {weekly})", "Weeks: {calc}, so rounding up gives {val}.")
        b.say("savings.q_weeks", **p.fields())
    else:
        item, friend = b.pick("item"), b.person()
        need = b.qty(20, 200)
        have = b.rng.randint(1, need // 2)
        b.say("savings.need", n=need, item=item, **p.fields())
        b.say("savings.have", h=have, item=item, **p.fields())
        missing = b.compute(
            "missing", f"{b.given('needed', need)} - {b.given('already_have', have)}", "Missing: {calc} = {val}."
        )
        if b.rng.random() < 0.4:
            f = b.rng.randint(1, max(1, int(b.value(missing)) // 3))
            b.say("savings.friend", f=f, friend=friend.name, **p.fields())
            missing = b.compute(
                "missing_after_help", f"{missing} - {b.given('from_friend', f)}", "After the help: {calc} = {val}."
            )
        c = b.count(4, 24) if not b.large else b.rng.randint(12, 999)
        b.say("savings.pack", c=c, item=item, **p.fields())
        if b.value(missing) <= 0:
            raise _Retry
        b.compute("packs", f"math.ceil({missing} / {b.given('per_pack', c)})", "Packs: {calc}, rounded up to {val}.")
        b.say("savings.q_packs", **p.fields())


def _wages(b: _Builder) -> None:
    p = b.person()
    w = b.price(8, 40)
    h = b.count(4, 10)
    b.say("wages.rate", w=money(w), **p.fields())
    b.say("wages.weekdays", h=h, **p.fields())
    rate = b.given("hourly_rate", w)
    hours = b.compute(
        "weekday_hours", f"{b.given('hours_per_day', h)} * {b.given('weekdays', 5)}", "Weekday hours: {calc} = {val}."
    )
    rent = b.rng.random() < 0.5
    if b.rng.random() < 0.5:
        hs = b.count(2, 8)
        b.say("wages.saturday", hs=hs, **p.fields())
        hours = b.compute("week_hours", f"{hours} + {b.given('saturday_hours', hs)}", "All hours: {calc} = {val}.")
    pay = b.compute("weekly_pay", f"{hours} * {rate}", "The week's pay is {calc} = ${val}.", places=2)
    if rent:
        pct = b.rng.choice([10, 20, 25, 30, 40, 50])
        b.say("wages.rent", p=pct, **p.fields())
        cost = b.compute("rent", f"{pay} * {b.given('rent_percent', pct)} / 100", "Rent is {calc} = ${val}.", places=2)
        b.compute("left_after_rent", f"{pay} - {cost}", "Left after rent: {calc} = ${val}.", places=2)
        b.say("wages.q_left", **p.fields())
    else:
        b.say("wages.q_pay", **p.fields())


def _recipe(b: _Builder) -> None:
    p, dish, ingredient = b.person(), b.pick("dish"), b.pick("ingredient")
    s = b.count(2, 12)
    per = b.qty(5, 120) // s + 1 if b.large else b.qty(5, 120)  # the stated total stays within 9 digits
    t = b.rng.choice([x for x in range(2, 41) if x != s])
    b.say("recipe.base", s=s, dish=dish, g=per * s, ingredient=ingredient)
    b.say("recipe.want", t=t, dish=dish, **p.fields())
    each = b.compute(
        "grams_per_serving",
        f"{b.given('recipe_grams', per * s)} / {b.given('recipe_servings', s)}",
        f"One of the {dish} needs {{calc}} = {{val}} g.",
    )
    need = b.compute("grams_needed", f"{each} * {b.given('servings_wanted', t)}", "In all: {calc} = {val} g.")
    buy = b.rng.random() < 0.4
    if buy:
        x = b.rng.randint(1, int(b.value(need)) - 1)
        b.say("recipe.has", x=x, ingredient=ingredient, **p.fields())
        need = b.compute("grams_to_buy", f"{need} - {b.given('grams_at_home', x)}", "To buy: {calc} = {val} g.")
    if b.rng.random() < 0.5:
        b.compute("kilograms", f"{need} / 1000", "In kilograms: {calc} = {val} kg.")
        b.say("recipe.q_buy_kg" if buy else "recipe.q_kg", ingredient=ingredient, **p.fields())
    else:
        b.say("recipe.q_buy_g" if buy else "recipe.q_g", ingredient=ingredient, **p.fields())


def _slug(noun: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", noun.lower()).strip("_")


FAMILIES: dict[str, Callable[[_Builder], None]] = {
    "inventory": _inventory,
    "shopping": _shopping,
    "travel": _travel,
    "schedule": _schedule,
    "compare": _compare,
    "savings": _savings,
    "wages": _wages,
    "recipe": _recipe,
}
# Clock times cannot have 5-9 digits, so the hard variant leaves the schedule family out.
LARGE_FAMILIES = [f for f in FAMILIES if f != "schedule"]

# ---------------------------------------------------------------------------------------------------------


def _program(lines: list[tuple[str, str]]) -> str:
    """`def solution(): ... return result`, the last computed variable renamed to `result`."""
    body = [f"{var} = {expr}" for var, expr in lines[:-1]]
    body.append(f"result = {lines[-1][1]}")
    if any("math." in expr for _, expr in lines):
        body.insert(0, "import math")
    return "def solution():\n" + "".join(f"    {line}\n" for line in body) + "    return result\n"


def count_ops(program: str) -> int:
    """Arithmetic operations in a program: binary operators plus rounding calls."""
    tree = ast.parse(program)
    return sum(isinstance(node, ast.BinOp | ast.Call) for node in ast.walk(tree))


def _difficulty(n_ops: int) -> str:
    return "easy" if n_ops <= 3 else "medium" if n_ops == 4 else "hard"


def _draw(rng: random.Random, split: str, large: bool) -> dict | None:
    family = rng.choice(LARGE_FAMILIES if large else list(FAMILIES))
    b = _Builder(rng, split, large)
    try:
        FAMILIES[family](b)
    except _Retry:
        return None
    program = _program(b.lines)
    n_ops = count_ops(program)
    if not 2 <= n_ops <= 6:
        return None
    answer = b.env[b.lines[-1][0]]
    question = " ".join(b.sentences)
    digits = [len(x.split(".")[0]) for x in numbers_in(question)]
    if large and not (max(digits) >= 5 and max(digits) <= 9):  # the hard variant: 5-9 digit numbers
        return None
    rationale = "\n".join(b.rationale + [f"{FINAL_ANSWER_PREFIX} {format_number(answer)}."])
    return {
        "question": question,
        "answer": answer_value(answer),
        "program": program,
        "rationale": rationale,
        "n_ops": n_ops,
        "difficulty": _difficulty(n_ops),
        "numbers": "large" if large else "small",
        "family": family,
        "template_ids": b.template_ids,
        "entities": b.entities,
    }


def generate(n: int, seed: int, split: str, large: bool = False) -> dict[str, list[dict]]:
    """Draw `n` distinct problems of one split. A problem is kept only if its number pattern belongs to
    this split (so splits never share one); duplicates of a question are dropped."""
    check_split(split)
    task = "math_word_hard" if large else "math_word"
    rng = split_rng(seed, task, split)
    drawn = draw_distinct(
        task, n, split, lambda: _draw(rng, split, large), key=lambda item: item["question"],
        belongs=lambda item: hash_split(number_signature(item["question"])) == split,
    )
    items: list[dict] = []
    for i, item in enumerate(drawn):
        record = {"id": f"{task}-{split}-{i:06d}", "task": task, "split": split}
        record.update(item)
        record["prompt"] = item["question"]
        record["completion"] = item["rationale"]
        record["messages"] = [
            {"role": "user", "content": item["question"]},
            {"role": "assistant", "content": item["rationale"]},
        ]
        items.append(record)
    return {"items": items}


def math_word(n: int, seed: int, split: str) -> dict[str, list[dict]]:
    """Multi-step arithmetic word problems (2-6 operations) with PAL programs and CoT rationales."""
    return generate(n, seed, split, large=False)


def math_word_hard(n: int, seed: int, split: str) -> dict[str, list[dict]]:
    """The same problems with 5-9 digit numbers (GSM-Hard style): programs succeed where mental math fails."""
    return generate(n, seed, split, large=True)
