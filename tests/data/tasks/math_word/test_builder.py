"""The builder on its own: exact steps, the rationale it writes, fresh variable names, clean-or-retry."""

import random
from fractions import Fraction

import pytest

from lmstack.data.tasks.common import pool_split
from lmstack.data.tasks.math_word.builder import Builder, Retry, money
from lmstack.data.tasks.math_word.pools import NAMES, PRONOUNS, VEHICLES


def test_money_shows_cents_only_when_there_are_some():
    assert [money(12), money(Fraction(25, 2)), money(Fraction(1, 4))] == ["$12", "$12.50", "$0.25"]


def test_a_step_is_exact_and_its_rationale_shows_the_values():
    b = Builder(random.Random(0), "train", large=False)
    price, count = b.given("price", Fraction("2.75")), b.given("count", 4)
    total = b.compute("total", f"{count} * {price}", "Total: {calc} = ${val}.", places=2)
    assert b.value(total) == 11  # exact: 2.75 is 11/4, not a float
    assert b.rationale == ["Total: 4 * 2.75 = $11."]
    assert b.lines == [("price", "2.75"), ("count", "4"), ("total", "count * price")]


def test_a_rounding_step_shows_the_division_then_the_rounded_value():
    b = Builder(random.Random(0), "train", large=False)
    items, per_box = b.given("items", 10), b.given("per_box", 3)
    boxes = b.compute("boxes", f"math.ceil({items} / {per_box})", "Boxes: {calc}, so {val}.")
    assert b.value(boxes) == 4
    assert b.rationale == ["Boxes: 10 / 3 = about 3.33, so 4."]


def test_a_reused_name_gets_a_fresh_variable():
    b = Builder(random.Random(0), "train", large=False)
    assert [b.given("days", 2), b.given("days", 3), b.given("days", 4)] == ["days", "days_2", "days_3"]


@pytest.mark.parametrize("expr", ["small - big", "big / small"])  # negative; 10/3 has no 3-place decimal
def test_an_unclean_step_asks_for_a_new_draw_and_records_nothing(expr):
    b = Builder(random.Random(0), "train", large=False)
    b.given("big", 10)
    b.given("small", 3)
    with pytest.raises(Retry):
        b.compute("bad", expr)
    assert "bad" not in b.env and len(b.lines) == 2 and not b.rationale


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_picks_come_from_the_split_part_of_a_pool_and_never_repeat(split):
    own = pool_split(VEHICLES, split)
    b = Builder(random.Random(1), split, large=False)
    picks = [b.pick("vehicle") for _ in own]
    assert sorted(picks) == sorted(own) and b.entities == picks


def test_a_person_has_the_pronouns_of_their_name():
    genders = dict(NAMES)
    b = Builder(random.Random(2), "train", large=False)
    for _ in range(10):
        p = b.person()
        assert (p.pron, p.obj, p.poss) == PRONOUNS[genders[p.name]]


def test_quantities_have_five_to_nine_digits_only_in_the_hard_variant():
    easy, hard = Builder(random.Random(3), "train", large=False), Builder(random.Random(3), "train", large=True)
    assert all(15 <= easy.qty(15, 120) <= 120 for _ in range(200))
    assert {len(str(hard.qty(15, 120))) for _ in range(200)} == {5, 6, 7, 8, 9}
    assert all(2 <= hard.count(2, 9) <= 9 for _ in range(50))  # multipliers stay small in both
