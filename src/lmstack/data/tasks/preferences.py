"""Preference pairs judged by a programmatic oracle (for reward models, DPO, and as a PPO reward).

A prompt is a small arithmetic question plus a stated style constraint ("Answer in at most 14 words.",
"Begin your reply with the word "Indeed"."). The oracle scores a response as

    score = 1.0 * (final answer correct, 1e-3 relative tolerance) + 0.5 * (constraint satisfied)

so correctness comes first and the constraint breaks ties. The rule is easy to learn from text but
invisible to a length heuristic: within each pair the preferred response is the longer one about half
of the time (length constraints pull both ways: "at most" favours the shorter, "at least" the longer).
`oracle_score(response, item)` is the reward to use for PPO on these prompts.
"""

from __future__ import annotations

import random

from lmstack.data.tasks.answers import extract_answer, format_number, is_correct
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
from lmstack.errors import DataError

CONSTRAINT_KINDS = ("lowercase", "max_words", "min_words", "starts_with", "ends_with", "includes")
CORRECT_WEIGHT, CONSTRAINT_WEIGHT = 1.0, 0.5

# Words the constraints name; split 3:1:1 by position like every hand-written pool.
WORDS = [
    "Indeed",
    "Certainly",
    "Alright",
    "Okay",
    "Sure",
    "Naturally",
    "Absolutely",
    "Right",
    "Well",
    "Clearly",
    "Honestly",
    "Gladly",
    "Splendid",
    "Understood",
    "Noted",
    "Agreed",
    "Listen",
    "Behold",
    "Voila",
    "Presto",
    "Marvellous",
    "Precisely",
    "Exactly",
    "Evidently",
    "Obviously",
]
TEMPLATES = Templates(
    "pref",
    {
        "q.add": (
            ["What is {a} plus {b}?", "Add {a} and {b}."],
            ["Compute the sum of {a} and {b}."],
            ["What do you get when {a} is added to {b}?"],
        ),
        "q.sub": (
            ["What is {a} minus {b}?", "Subtract {b} from {a}."],
            ["Compute {a} take away {b}."],
            ["How much is left when {b} is removed from {a}?"],
        ),
        "q.mul": (
            ["What is {a} times {b}?", "Multiply {a} by {b}."],
            ["Compute the product of {a} and {b}."],
            ["What do {a} groups of {b} come to?"],
        ),
        "q.minutes": (
            ["How many minutes are there in {a} hours?", "Convert {a} hours to minutes."],
            ["Express {a} hours in minutes."],
            ["How many minutes make up {a} hours?"],
        ),
        "q.share": (
            [
                "If {a} sweets are shared equally among {b} children, how many does each child get?",
                "Split {a} marbles evenly into {b} bags. How many are in each bag?",
            ],
            ["{a} stickers go equally to {b} friends. How many does each friend receive?"],
            ["Divide {a} cards fairly between {b} players. How many cards does each player hold?"],
        ),
        "c.lowercase": (
            ["Write your whole reply in lowercase letters.", "Use no capital letters at all."],
            ["Answer entirely in lowercase."],
            ["Do not use any uppercase letters."],
        ),
        "c.max_words": (
            ["Answer in at most {k} words.", "Keep your reply to {k} words or fewer."],
            ["Use no more than {k} words."],
            ["Your reply must not exceed {k} words."],
        ),
        "c.min_words": (
            ["Answer in at least {k} words.", "Write a reply of {k} words or more."],
            ["Use no fewer than {k} words."],
            ["Your reply must contain at least {k} words."],
        ),
        "c.starts_with": (
            ['Begin your reply with the word "{w}".', 'Start your answer with "{w}".'],
            ['The first word of your reply must be "{w}".'],
            ['Open your reply with the word "{w}".'],
        ),
        "c.ends_with": (
            ['End your reply with the word "{w}".', 'Finish your answer with "{w}".'],
            ['The last word of your reply must be "{w}".'],
            ['Close your reply with the word "{w}".'],
        ),
        "c.includes": (
            ['Mention the word "{w}" somewhere in your reply.', 'Use the word "{w}" in your answer.'],
            ['Your reply must contain the word "{w}".'],
            ['Make sure the word "{w}" appears in your reply.'],
        ),
        "r.explain": (
            [
                "I start from {a} and {b}.",
                "This is a quick calculation.",
                "Let me work through it carefully.",
                "The numbers in the question are {a} and {b}.",
                "It helps to write the step down.",
            ],
            [
                "First I look at the two numbers, {a} and {b}.",
                "The operation is simple enough.",
                "I double-check the arithmetic before answering.",
            ],
            [
                "The question gives {a} and {b}.",
                "Doing this step by step avoids mistakes.",
                "I verify the result once more.",
            ],
        ),
        "r.answer": (
            ["The answer is {x}.", "So the result is {x}."],
            ["That gives {x}."],
            ["The final result is {x}."],
        ),
        "r.includes": (
            ["I would describe this as {w}.", "{w} is the word for it."],
            ["Let me say {w} here."],
            ["One word for this: {w}."],
        ),
    },
)


def _words(text: str) -> list[str]:
    return [w.strip(".,;:!?\"'()").lower() for w in text.split()]


def constraint_ok(response: str, constraint: dict) -> bool:
    """Does `response` satisfy the stated constraint ({"kind": ..., "value": ...})?"""
    kind, value = constraint["kind"], constraint.get("value")
    words = _words(response)
    if kind == "lowercase":
        return any(c.isalpha() for c in response) and response == response.lower()
    if kind == "max_words":
        return 0 < len(response.split()) <= int(value)
    if kind == "min_words":
        return len(response.split()) >= int(value)
    if kind == "starts_with":
        return bool(words) and words[0] == str(value).lower()
    if kind == "ends_with":
        return bool(words) and words[-1] == str(value).lower()
    if kind == "includes":
        return str(value).lower() in words
    raise DataError(f"unknown constraint kind {kind!r}; expected one of {', '.join(CONSTRAINT_KINDS)}")


def oracle_score(response: str, item: dict) -> float:
    """The oracle: 1.0 for a correct final answer plus 0.5 for satisfying the constraint (0, 0.5, 1, 1.5).

    `item` is a record of this task (it needs `answer` and `constraint`); usable directly as a PPO reward."""
    correct = is_correct(extract_answer(response), item["answer"])
    return CORRECT_WEIGHT * correct + CONSTRAINT_WEIGHT * constraint_ok(response, item["constraint"])


def _question(rng: random.Random, split: str) -> tuple[str, str, int, list[int]]:
    """(template id, question, answer, the numbers the question states)."""
    op = rng.choice(["add", "sub", "mul", "minutes", "share"])
    if op == "add":
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        ans = a + b
    elif op == "sub":
        a = rng.randint(50, 999)
        b = rng.randint(10, a - 1)
        ans = a - b
    elif op == "mul":
        a, b = rng.randint(2, 99), rng.randint(2, 30)
        ans = a * b
    elif op == "minutes":
        a = rng.randint(2, 48)
        tid, template = TEMPLATES.pick(rng, "q.minutes", split)
        return tid, fill(template, a=a), a * 60, [a]
    else:
        b, each = rng.randint(2, 12), rng.randint(2, 40)
        a, ans = b * each, each
    tid, template = TEMPLATES.pick(rng, f"q.{op}", split)
    return tid, fill(template, a=a, b=b), ans, [a, b]


def _wrong(rng: random.Random, answer: int) -> int:
    """A plausible wrong answer: off by a little, or a digit slip (never within the 1e-3 tolerance)."""
    for _ in range(100):
        x = rng.choice([answer + rng.randint(1, 9), answer - rng.randint(1, 9), answer * 10, answer + 10, answer - 10])
        if x >= 0 and not is_correct(x, answer):
            return x
    return answer * 2 + 1


def _respond(
    rng: random.Random, split: str, operands: list[int], value: int, constraint: dict, satisfy: bool, n_explain: int
) -> tuple[str, list[str]] | None:
    """A response stating `value`, with `n_explain` explanation sentences, that does (not) satisfy the
    constraint; None if that combination cannot be realised. `operands` are the numbers the question states."""
    ids, sentences = [], []
    explain = TEMPLATES.table["r.explain"][check_split(split)]
    usable = [j for j, t in enumerate(explain) if len(operands) == 2 or "{" not in t]
    for j in rng.sample(usable, min(n_explain, len(usable))):
        ids.append(f"pref.r.explain.{split}.{j}")
        sentences.append(fill(explain[j], a=operands[0], b=operands[-1]))
    tid, template = TEMPLATES.pick(rng, "r.answer", split)
    ids.append(tid)
    sentences.append(fill(template, x=format_number(value)))
    kind, word = constraint["kind"], str(constraint.get("value"))
    if kind == "includes" and satisfy:
        tid, template = TEMPLATES.pick(rng, "r.includes", split)
        ids.append(tid)
        sentences.insert(rng.randint(0, len(sentences) - 1), fill(template, w=word.lower()))
    text = " ".join(sentences)
    if kind == "starts_with" and satisfy:
        text = f"{word}, {text[0].lower()}{text[1:]}"
    if kind == "ends_with" and satisfy:
        text = f"{text} {word}"
    if kind == "lowercase" and satisfy:
        text = text.lower()
    if constraint_ok(text, constraint) != satisfy:
        return None
    return text, ids


def _constraint(rng: random.Random, split: str) -> tuple[str, str, dict, list[str]]:
    kind = rng.choice(CONSTRAINT_KINDS)
    words = []
    if kind == "max_words":
        value: object = rng.randint(8, 22)
    elif kind == "min_words":
        value = rng.randint(10, 26)
    elif kind == "lowercase":
        value = None
    else:
        value = rng.choice(pool_split(WORDS, split))
        words.append(value)
    tid, template = TEMPLATES.pick(rng, f"c.{kind}", split)
    return tid, fill(template, k=value, w=value), {"kind": kind, "value": value}, words


def _pair(rng: random.Random, split: str) -> dict | None:
    qid, question, answer, operands = _question(rng, split)
    cid, instruction, constraint, words = _constraint(rng, split)
    item = {"answer": answer, "constraint": constraint}
    qualities = [(1, 1), (1, 0), (0, 1), (0, 0)]  # (correct, satisfies)
    hi, lo = sorted(rng.sample(qualities, 2), key=lambda q: -(CORRECT_WEIGHT * q[0] + CONSTRAINT_WEIGHT * q[1]))
    want_longer = rng.random() < 0.5
    fallback = None
    for _ in range(30):
        built = []
        for correct, satisfy in (hi, lo):
            value = answer if correct else _wrong(rng, answer)
            built.append(_respond(rng, split, operands, value, constraint, bool(satisfy), rng.randint(0, 3)))
        if None in built:
            continue
        (chosen, cids), (rejected, rids) = built
        if len(chosen) == len(rejected):
            continue
        if (len(chosen) > len(rejected)) == want_longer:
            fallback = (chosen, cids, rejected, rids)
            break
        fallback = fallback or (chosen, cids, rejected, rids)
    if fallback is None:
        return None
    chosen, cids, rejected, rids = fallback
    cs, rs = oracle_score(chosen, item), oracle_score(rejected, item)
    if cs <= rs:  # cannot happen unless a template breaks the oracle; never emit a wrong label
        raise DataError(f"preference oracle disagrees with its own construction: {chosen!r} vs {rejected!r}")
    prompt = f"{question} {instruction}"
    return {
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "answer": answer,
        "constraint": constraint,
        "chosen_score": cs,
        "rejected_score": rs,
        "template_ids": list(dict.fromkeys([qid, cid] + cids + rids)),
        "entities": words,
    }


def preferences(n: int, seed: int, split: str) -> dict[str, list[dict]]:
    """Prompt + chosen/rejected responses, ranked by a correctness-then-constraint oracle (not by length)."""
    check_split(split)
    rng = split_rng(seed, "preferences", split)
    drawn = draw_distinct(
        "preferences",
        n,
        split,
        lambda: _pair(rng, split),
        key=lambda pair: pair["prompt"],
        belongs=lambda pair: hash_split(number_signature(pair["prompt"])) == split,
    )
    items = [
        {"id": f"preferences-{split}-{i:06d}", "task": "preferences", "split": split, **pair}
        for i, pair in enumerate(drawn)
    ]
    return {"items": items}
