"""Sentiment-style labelling of generated product reviews (a classification task for multi-task and
forgetting experiments).

A review opens with a sentence naming an invented product, then judges 2-4 aspects. Each aspect
judgement is positive or negative, and some are negated ("is not sturdy at all" is negative, "is not
flimsy in the slightest" positive), so counting positive words is not enough. The label is `positive`
when every judgement is positive, `negative` when every one is negative, and `mixed` otherwise. Labels
are balanced. Brands and sentence templates are owned by one split; adjectives and aspects are shared
vocabulary (the skill being tested is reading them).
"""

from __future__ import annotations

import random

from lmstack.data.tasks.common import Templates, check_split, draw_distinct, fill, pool_split, split_rng

LABELS = ("negative", "mixed", "positive")
INSTRUCTION = "Is the following review positive, negative or mixed? Answer with one word."

BRANDS = [
    "Zentro",
    "Larkwell",
    "Quenly",
    "Tovani",
    "Brisko",
    "Melvane",
    "Orrin & Hale",
    "Pellucid",
    "Vantory",
    "Juniver",
    "Corvell",
    "Astley Brook",
    "Nimbra",
    "Solenne",
    "Harlix",
    "Frayne",
    "Gildmoor",
    "Kestova",
    "Lumaro",
    "Dovecote",
    "Rookery",
    "Tamsel",
    "Wexford Lane",
    "Ysolde",
    "Pimbury",
    "Carrow",
    "Elmridge",
    "Fennick",
    "Grisby",
    "Hollin",
]
KINDS = [
    "headphones",
    "blender",
    "backpack",
    "desk lamp",
    "kettle",
    "office chair",
    "rain jacket",
    "toaster",
    "tent",
    "wireless speaker",
    "hiking boots",
    "coffee grinder",
    "bike helmet",
    "air purifier",
    "keyboard",
]
ASPECTS = [
    "build quality",
    "price",
    "delivery",
    "design",
    "customer service",
    "instruction manual",
    "packaging",
    "durability",
    "ease of use",
    "size",
    "noise level",
    "warranty",
]
POSITIVE = [
    "excellent",
    "sturdy",
    "reliable",
    "impressive",
    "solid",
    "pleasant",
    "superb",
    "great",
    "thoughtful",
    "generous",
    "fantastic",
    "dependable",
]
NEGATIVE = [
    "flimsy",
    "disappointing",
    "poor",
    "awful",
    "unreliable",
    "cheap-feeling",
    "frustrating",
    "terrible",
    "confusing",
    "shoddy",
    "mediocre",
    "annoying",
]

TEMPLATES = Templates(
    "reviews",
    {
        "open": (
            ["I bought the {product} last month.", "Here is my review of the {product}."],
            ["My thoughts on the {product} after a few weeks:"],
            ["I have been using the {product} for a while now."],
        ),
        # The same templates serve both polarities: only the adjective and the negation carry the sentiment.
        "judge": (
            ["The {aspect} is {adj}.", "I found the {aspect} {adj}."],
            ["Honestly, the {aspect} feels {adj}.", "In my view the {aspect} seems {adj}."],
            ["What stands out is how {adj} the {aspect} is.", "The {aspect} turned out {adj}."],
        ),
        "judge_not": (
            ["The {aspect} is not {adj} at all.", "I would not call the {aspect} {adj}."],
            ["The {aspect} is hardly {adj}.", "In no way is the {aspect} {adj}."],
            ["Nobody could describe the {aspect} as {adj}.", "The {aspect} never struck me as {adj}."],
        ),
    },
)


def _review(rng: random.Random, split: str) -> dict:
    label = rng.choice(LABELS)
    k = rng.randint(2, 4)
    if label == "positive":
        polarity = [True] * k
    elif label == "negative":
        polarity = [False] * k
    else:
        polarity = [True, False] + [rng.random() < 0.5 for _ in range(k - 2)]
        rng.shuffle(polarity)
    brand, kind = rng.choice(pool_split(BRANDS, split)), rng.choice(KINDS)
    product = f"{brand} {kind}"
    tid, template = TEMPLATES.pick(rng, "open", split)
    ids, sentences, judgements = [tid], [fill(template, product=product)], []
    for aspect, good in zip(rng.sample(ASPECTS, k), polarity):
        negated = rng.random() < 0.35
        # A negated judgement uses an adjective of the opposite polarity ("not flimsy" is positive).
        adj = rng.choice(POSITIVE if good != negated else NEGATIVE)
        tid, template = TEMPLATES.pick(rng, "judge_not" if negated else "judge", split)
        ids.append(tid)
        sentences.append(fill(template, aspect=aspect, adj=adj))
        judgements.append({"aspect": aspect, "positive": good, "negated": negated})
    return {
        "text": " ".join(sentences),
        "label": label,
        "product": product,
        "judgements": judgements,
        "template_ids": ids,
        "entities": [brand],
    }


def reviews(n: int, seed: int, split: str) -> dict[str, list[dict]]:
    """Generated product reviews labelled positive / negative / mixed (with negations)."""
    check_split(split)
    rng = split_rng(seed, "reviews", split)
    drawn = draw_distinct("reviews", n, split, lambda: _review(rng, split), key=lambda r: r["text"])
    items = []
    for i, r in enumerate(drawn):
        prompt = f"{INSTRUCTION}\nReview: {r['text']}"
        items.append(
            {
                "id": f"reviews-{split}-{i:06d}",
                "task": "reviews",
                "split": split,
                **r,
                "labels": list(LABELS),
                "prompt": prompt,
                "completion": r["label"],
                "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": r["label"]}],
            }
        )
    return {"items": items}
