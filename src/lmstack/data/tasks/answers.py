"""Answer formatting, extraction and checking, shared by the generators and the evaluators (PAL, CoT, ReST).

Numeric answers are compared with a 1e-3 *relative* tolerance, as PAL's scorer does, so a program that
computes 12.499999999 for 12.5 is right and one that rounds 1234567 to 1230000 is wrong. Text answers
(the knowledge base) are compared after SQuAD-style normalisation against the gold answer and its aliases.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections.abc import Iterable
from decimal import Decimal
from fractions import Fraction

FINAL_ANSWER_PREFIX = "The answer is"
REL_TOL = 1e-3

# A number: optional sign (not when glued to a word or a hyphenated code), thousands groups, decimals.
_NUMBER = re.compile(r"(?:(?<![\w.])-)?(?<![\w.])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.])-?\.\d+")
_FINAL = re.compile(re.escape(FINAL_ANSWER_PREFIX) + r"\s*:?\s*\$?\s*", re.IGNORECASE)


def format_number(x: int | float | Fraction | Decimal, max_decimals: int = 6) -> str:
    """Plain decimal text without exponent or trailing zeros: 12 -> '12', 12.50 -> '12.5', 1/3 -> '0.333333'."""
    if isinstance(x, bool):
        raise TypeError("format_number expects a number, not a bool")
    if isinstance(x, Fraction) and x.denominator == 1:
        return str(x.numerator)
    d = Decimal(x.numerator) / Decimal(x.denominator) if isinstance(x, Fraction) else Decimal(str(x))
    d = round(d, max_decimals)
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def answer_value(x: Fraction) -> int | float:
    """The JSON value stored for an exact answer: an int when integral, else the (short) decimal float."""
    return x.numerator if x.denominator == 1 else float(format_number(x))


def parse_number(text: str) -> float | None:
    """The first number in `text` ('$1,234.50' -> 1234.5, '-3' -> -3.0), or None if there is none."""
    match = _NUMBER.search(text)
    return float(match.group().replace(",", "")) if match else None


def extract_answer(text: str) -> float | None:
    """The final answer of a free-text response: the number after the last 'The answer is', else the last
    number in the text. Returns None when the text contains no number."""
    finals = list(_FINAL.finditer(text))
    if finals:
        value = parse_number(text[finals[-1].end() :])
        if value is not None:
            return value
    numbers = _NUMBER.findall(text)
    return float(numbers[-1].replace(",", "")) if numbers else None


def is_correct(prediction: object, gold: int | float, rel_tol: float = REL_TOL, abs_tol: float = 1e-6) -> bool:
    """True when `prediction` (a number, or text to extract one from) is within `rel_tol` of `gold`.

    Anything that is not a finite number (None, NaN, a bool, a crashed program's error) is simply wrong.
    """
    if isinstance(prediction, str):
        prediction = extract_answer(prediction)
    if isinstance(prediction, bool) or not isinstance(prediction, int | float | Fraction | Decimal):
        return False
    try:
        p, g = float(prediction), float(gold)
    except (OverflowError, ValueError):
        return False
    if not (math.isfinite(p) and math.isfinite(g)):
        return False
    return abs(p - g) <= max(rel_tol * abs(g), abs_tol)


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_PUNCT = {ord(c): " " for c in string.punctuation if c not in ".-"}


def normalize_text(text: str) -> str:
    """Lowercase, NFKC, no thousands commas, punctuation and articles removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = _THOUSANDS.sub("", text)
    text = text.translate(_PUNCT)
    text = re.sub(r"(?<!\d)[.-]|[.-](?!\d)", " ", text)  # keep '.' and '-' only inside numbers
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def text_match(prediction: str, answers: Iterable[str]) -> bool:
    """Exact match after normalisation against any of the gold answer strings (answer + aliases)."""
    pred = normalize_text(prediction)
    return any(pred == normalize_text(a) for a in answers if normalize_text(a))


def contains_answer(text: str, answers: Iterable[str]) -> bool:
    """True when some gold answer string occurs in `text` as whole words (after normalisation)."""
    haystack = f" {normalize_text(text)} "
    return any(f" {normalize_text(a)} " in haystack for a in answers if normalize_text(a))
