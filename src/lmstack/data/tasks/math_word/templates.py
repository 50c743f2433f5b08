"""The question sentences of the math word problems, each owned by one split.

slot -> (train, validation, test). Fields: {name} {pron} {obj} {poss} of the main person, plus the
numbers and nouns each slot states.
"""

from __future__ import annotations

from lmstack.data.tasks.common import Templates

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
