import math
from fractions import Fraction

import pytest

from lmstack.data.tasks.answers import (
    FINAL_ANSWER_PREFIX,
    answer_value,
    contains_answer,
    extract_answer,
    format_number,
    is_correct,
    normalize_text,
    parse_number,
    text_match,
)


@pytest.mark.parametrize(
    "value, text",
    [
        (12, "12"),
        (12.0, "12"),
        (12.5, "12.5"),
        (Fraction(5, 4), "1.25"),
        (Fraction(1, 3), "0.333333"),
        (1234567891, "1234567891"),
        (-3.50, "-3.5"),
        (0.1 + 0.2, "0.3"),
    ],
)
def test_format_number(value, text):
    assert format_number(value) == text


def test_answer_value_keeps_ints_and_short_decimals():
    assert answer_value(Fraction(42)) == 42 and isinstance(answer_value(Fraction(42)), int)
    assert answer_value(Fraction(191037621_6, 10)) == 191037621.6


@pytest.mark.parametrize(
    "text, value",
    [
        ("$1,234.50 in total", 1234.5),
        ("it is -3 degrees", -3.0),
        ("order QX-4821", 4821.0),
        ("none here", None),
        ("12, 5 and 7", 12.0),
        ("about .5 litres", 0.5),
    ],
)
def test_parse_number(text, value):
    assert parse_number(text) == value


def test_extract_answer_prefers_the_final_answer_line():
    text = f"First 3 + 4 = 7.\nThen 7 * 2 = 14.\n{FINAL_ANSWER_PREFIX} 14.\nCheck: 14 / 2 = 7."
    assert extract_answer(text) == 14.0
    assert extract_answer("we get 3 then 12 apples") == 12.0
    assert extract_answer("the answer is: $1,250") == 1250.0
    assert extract_answer("The answer is unclear, maybe 8") == 8.0  # no number after the prefix: last number
    assert extract_answer("no digits at all") is None


def test_is_correct_uses_relative_tolerance():
    assert is_correct(1000.9, 1000)  # 9e-4 relative
    assert not is_correct(1001.5, 1000)  # 1.5e-3 relative
    assert is_correct(12.499999999, 12.5)
    assert not is_correct(1230000, 1234567)  # 3.7e-3 off
    assert is_correct(123456789 + 100000, 123456789)  # 8e-4: PAL's tolerance is relative, not absolute
    assert is_correct(0.0, 0) and not is_correct(0.01, 0)
    assert is_correct("so the answer is 42.", 42)
    for bad in (None, float("nan"), math.inf, True, "no number", [42], {"x": 42}):
        assert not is_correct(bad, 42)


def test_text_normalisation_and_matching():
    assert normalize_text("The Korvath  Highlands!") == "korvath highlands"
    assert normalize_text("1,234,000 people") == "1234000 people"
    assert normalize_text("$1,250.") == "1250"
    assert text_match("korvath highlands", ["the Korvath Highlands"])
    assert not text_match("Korvath", ["the Korvath Highlands"])
    assert contains_answer("It was founded in 1987 by Ilse.", ["1987"])
    assert not contains_answer("It was founded in 19870.", ["1987"])  # whole words only
    assert contains_answer("Talvex Instruments is based here.", ["talvex instruments"])
    assert not contains_answer("Talvex Institute is based here.", ["Talvex Instruments"])
    assert not contains_answer("anything", ["", "   "])
