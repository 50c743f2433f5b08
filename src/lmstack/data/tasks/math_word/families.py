"""The eight problem families. Each draws one problem into a `Builder`; question sentences come only from
TEMPLATES, and a draw that cannot make a clean problem raises `Retry`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from fractions import Fraction

from lmstack.data.tasks.answers import format_number
from lmstack.data.tasks.math_word.builder import Builder, Retry, money


def _inventory(b: Builder) -> None:
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
        raise Retry
    b.say("inventory.question", item=item, **p.fields())


def _shopping(b: Builder) -> None:
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


def _travel(b: Builder) -> None:
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


def _schedule(b: Builder) -> None:
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


def _compare(b: Builder) -> None:
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
        raise Retry
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


def _savings(b: Builder) -> None:
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
            raise Retry
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
            raise Retry
        b.compute("packs", f"math.ceil({missing} / {b.given('per_pack', c)})", "Packs: {calc}, rounded up to {val}.")
        b.say("savings.q_packs", **p.fields())


def _wages(b: Builder) -> None:
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


def _recipe(b: Builder) -> None:
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


FAMILIES: dict[str, Callable[[Builder], None]] = {
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
