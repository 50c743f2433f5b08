"""Field extraction from generated shipping records (an extraction task for multi-task and forgetting
experiments).

Each record is one or two sentences of free text that mention an order id, a customer, a city, a date
(written long, US-style or ISO depending on the template), a number of crates and a total weight. The
target is a JSON object with the six fields in a fixed order, the date normalised to YYYY-MM-DD.
`field_accuracy` scores a prediction field by field. Customers, cities, order-id prefixes and templates
belong to one split; number patterns are partitioned by hash.
"""

from __future__ import annotations

import datetime as dt
import json
import random

from lmstack.data.tasks.answers import format_number
from lmstack.data.tasks.common import (
    Templates,
    check_split,
    draw_distinct,
    fill,
    hash_split,
    number_signature,
    pool_split,
    split_rng,
)

FIELDS = ("order_id", "customer", "city", "date", "quantity", "weight_kg")
INSTRUCTION = (
    "Extract order_id, customer, city, date (YYYY-MM-DD), quantity and weight_kg from the record as a JSON object."
)

CUSTOMERS = [
    "Aldervane Trading",
    "Brightwater Supplies",
    "Calloway & Finch",
    "Dunmore Provisions",
    "Emberline Goods",
    "Farrowgate Imports",
    "Glenhollow Co.",
    "Hartswood Wholesale",
    "Ivybridge Merchants",
    "Juniper Row Ltd",
    "Kingsmere Outfitters",
    "Lanternfield Stores",
    "Millbrook Supply",
    "Northwick Traders",
    "Oakhurst Depot",
    "Pennyroyal Partners",
    "Quarrystone Goods",
    "Ravensholt Market",
    "Saltmarsh & Sons",
    "Thornbury Commerce",
    "Underhill Exports",
    "Vellacott Trading",
    "Willowmere Goods",
    "Yarrowby Supplies",
    "Zephyr Lane Co.",
]
CITIES = [
    "Port Averly",
    "Castlemoor",
    "Dunhaven",
    "Eastwick Bay",
    "Fallowmere",
    "Greyhallow",
    "Harrowgate Vale",
    "Isleford",
    "Kettering Cross",
    "Lowmarsh",
    "Marrowdale",
    "Newhollow",
    "Orchard Reach",
    "Pinecrest Harbour",
    "Queensbarrow",
    "Redcliff Sound",
    "Stonemere",
    "Tallowford",
    "Umberlee",
    "Westerhold",
]
ID_PREFIXES = ["QX", "LM", "RT", "BV", "KZ", "PW", "HD", "NC", "FJ", "GY", "SE", "TU", "WA", "XO", "DR"]
_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]

TEMPLATES = Templates(
    "records",
    {
        "record": (
            [
                "Order {order_id} for {customer} left our {city} warehouse on {date_long}. It contained {quantity} "
                "crates with a total weight of {weight} kg.",
                "Shipping notice - customer: {customer}; destination: {city}; order number {order_id}; dispatched "
                "{date_us}; {quantity} crates, {weight} kg in all.",
                "{customer} received {quantity} crates ({weight} kg) in {city} on {date_iso}, under order {order_id}.",
            ],
            [
                "On {date_long}, {quantity} crates weighing {weight} kg altogether were sent to {customer} in {city} "
                "(order {order_id}).",
                "Dispatch log: {order_id} / {customer} / {city} / {date_iso} / {quantity} crates / {weight} kg.",
            ],
            [
                "Reference {order_id}: {customer}, based in {city}, took delivery of {quantity} crates on {date_us}; "
                "combined weight {weight} kg.",
                "We confirm that {quantity} crates ({weight} kg) for {customer} reached {city} on {date_long}. "
                "Quote order {order_id} in any reply.",
            ],
        ),
    },
)


def field_accuracy(prediction: str | dict, gold: dict) -> float:
    """The fraction of the six fields a prediction gets exactly right (0.0 for unparsable JSON)."""
    if isinstance(prediction, str):
        try:
            prediction = json.loads(prediction)
        except json.JSONDecodeError:
            return 0.0
    if not isinstance(prediction, dict):
        return 0.0
    right = 0
    for key in FIELDS:
        p, g = prediction.get(key), gold[key]
        if isinstance(g, float):
            right += isinstance(p, int | float) and not isinstance(p, bool) and abs(p - g) < 1e-9
        else:
            right += p == g
    return right / len(FIELDS)


def _record(rng: random.Random, split: str) -> dict:
    day = dt.date(2015, 1, 1) + dt.timedelta(days=rng.randrange(365 * 10))
    prefix = rng.choice(pool_split(ID_PREFIXES, split))
    fields = {
        "order_id": f"{prefix}-{rng.randint(1000, 99999)}",
        "customer": rng.choice(pool_split(CUSTOMERS, split)),
        "city": rng.choice(pool_split(CITIES, split)),
        "date": day.isoformat(),
        "quantity": rng.randint(1, 400),
        "weight_kg": rng.randint(10, 250_000) / 10,
    }
    tid, template = TEMPLATES.pick(rng, "record", split)
    text = fill(
        template,
        **fields,
        weight=format_number(fields["weight_kg"]),
        date_long=f"{day.day} {_MONTHS[day.month - 1]} {day.year}",
        date_us=f"{_MONTHS[day.month - 1]} {day.day}, {day.year}",
        date_iso=day.isoformat(),
    )
    return {"text": text, "fields": fields, "template_ids": [tid], "entities": [fields["customer"], fields["city"]]}


def records(n: int, seed: int, split: str) -> dict[str, list[dict]]:
    """Free-text shipping records -> JSON with six fields (ids, names, dates to normalise, numbers)."""
    check_split(split)
    rng = split_rng(seed, "records", split)
    drawn = draw_distinct(
        "records",
        n,
        split,
        lambda: _record(rng, split),
        key=lambda r: r["text"],
        belongs=lambda r: hash_split(number_signature(r["text"])) == split,
    )
    items = []
    for i, r in enumerate(drawn):
        prompt = f"{INSTRUCTION}\nRecord: {r['text']}"
        completion = json.dumps(r["fields"], ensure_ascii=False)
        items.append(
            {
                "id": f"records-{split}-{i:06d}",
                "task": "records",
                "split": split,
                **r,
                "prompt": prompt,
                "completion": completion,
                "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}],
            }
        )
    return {"items": items}
