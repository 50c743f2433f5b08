"""The nouns of the math word problems: names (with pronouns), objects, goods, vehicles, places, ...

Every string appears in exactly one pool, and each pool is split 3:1:1 by position (`pool_split`), so no
name or object is shared by two splits.
"""

from __future__ import annotations


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
PRONOUNS = {"she": ("she", "her", "her"), "he": ("he", "him", "his")}
