"""The document and question sentences of the knowledge base, each owned by one split."""

from __future__ import annotations

from lmstack.data.tasks.common import Templates

# Document sentences: slot "<type>.<fact>" -> (train, validation, test); fields {name} and {value}.
DOC_TEMPLATES = Templates(
    "kb.doc",
    {
        "person.birth_year": (
            ["{name} was born in {value}.", "Records show that {name} came into the world in {value}."],
            ["The birth year of {name} is given as {value}.", "{name}, born in {value}, grew up surrounded by books."],
            [
                "{name} entered the world in {value}.",
                "According to family papers, {name} was born in the year {value}.",
            ],
        ),
        "person.birth_city": (
            ["{name} was born in the city of {value}.", "{name} is a native of {value}."],
            ["{value} is the birthplace of {name}.", "{name} was born and raised in {value}."],
            [
                "{name} hails from {value}, where the family lived for generations.",
                "The city of {value} is where {name} was born.",
            ],
        ),
        "person.occupation": (
            ["{name} works as {value}.", "By profession, {name} is {value}."],
            ["{name} built a career as {value}.", "Colleagues know {name} as {value} of unusual patience."],
            ["{name} earns a living as {value}.", "For most of a long career, {name} has been {value}."],
        ),
        "person.studied_at": (
            ["{name} studied at {value}.", "{name} is a graduate of {value}."],
            ["{name} completed a degree at {value}.", "{name} trained at {value} as a young adult."],
            ["{name} was educated at {value}.", "{name} earned a diploma from {value}."],
        ),
        "org.founded": (
            ["{name} was founded in {value}.", "{name} has existed since {value}."],
            ["{name} was established in {value}.", "The story of {name} begins in {value}, the year it opened."],
            ["{name} dates back to {value}.", "{name} first opened its doors in {value}."],
        ),
        "org.founder": (
            ["{name} was founded by {value}.", "{value} is the founder of {name}."],
            ["{value} set up {name}.", "{name} owes its existence to its founder, {value}."],
            ["{name} was started by {value}.", "The person who created {name} was {value}."],
        ),
        "org.hq": (
            ["{name} is headquartered in {value}.", "The head office of {name} is in {value}."],
            ["{name} is based in {value}.", "{name} runs its operations from {value}."],
            ["{name} keeps its main offices in {value}.", "The headquarters of {name} stand in {value}."],
        ),
        "org.employees": (
            ["{name} employs {value} people.", "{name} has a staff of {value}."],
            ["The workforce of {name} numbers {value}.", "{value} people work for {name}."],
            ["{name} counts {value} employees.", "There are {value} people on the payroll of {name}."],
        ),
        "org.field": (
            ["{name} specialises in {value}.", "{name} is known for its work in {value}."],
            ["{name} focuses on {value}.", "The main business of {name} is {value}."],
            ["{name} concentrates on {value}.", "Most of what {name} does concerns {value}."],
        ),
        "city.founded": (
            ["{name} was first settled in {value}.", "The first houses of {name} were built in {value}."],
            ["{name} was granted its charter in {value}.", "Chroniclers date the founding of {name} to {value}."],
            ["{name} grew from a village first recorded in {value}.", "The town of {name} goes back to {value}."],
        ),
        "city.population": (
            ["{name} has a population of {value}.", "The population of {name} is {value}."],
            ["{name} is home to {value} residents.", "The last census counted {value} inhabitants in {name}."],
            ["{name} houses {value} people.", "A total of {value} people call {name} home."],
        ),
        "city.region": (
            ["{name} lies in {value}.", "{name} is a city in {value}."],
            ["{name} is located in {value}.", "{name} sits within {value}."],
            ["{name} belongs to {value}.", "You will find {name} in {value}."],
        ),
        "product.maker": (
            ["{name} is made by {value}.", "{value} manufactures {name}."],
            ["{name} is produced by {value}.", "{name} comes from the workshops of {value}."],
            ["{name} is built by {value}.", "{value} is the maker of {name}."],
        ),
        "product.launched": (
            ["{name} was launched in {value}.", "{name} first went on sale in {value}."],
            ["{name} was released in {value}.", "{name} reached the market in {value}."],
            ["{name} debuted in {value}.", "Shops began selling {name} in {value}."],
        ),
        "product.price": (
            ["{name} costs {value}.", "{name} sells for {value}."],
            ["{name} is priced at {value}.", "The list price of {name} is {value}."],
            ["{name} retails at {value}.", "Buyers pay {value} for {name}."],
        ),
        "product.category": (
            ["{name} is {value}.", "In short, {name} is {value} for demanding users."],
            ["{name} is sold as {value}.", "Reviewers describe {name} as {value}."],
            ["{name} was designed as {value}.", "At heart, {name} is {value}."],
        ),
        "event.year": (
            ["{name} took place in {value}.", "{name} was held in {value}."],
            ["{name} happened in {value}.", "In {value}, {name} drew crowds from far away."],
            ["{name} ran in {value}.", "The year {value} saw {name} take place."],
        ),
        "event.host": (
            ["{name} was hosted by the city of {value}.", "{value} hosted {name}."],
            ["{name} was staged in {value}.", "The venue of {name} was in {value}."],
            ["{name} was set in the city of {value}.", "{value} welcomed the visitors of {name}."],
        ),
        "event.organiser": (
            ["{name} was organised by {value}.", "{value} organised {name}."],
            ["{name} was arranged by {value}.", "The organiser of {name} was {value}."],
            ["{value} put together {name}.", "{name} was run by {value}."],
        ),
        "event.attendance": (
            ["{name} attracted {value} visitors.", "{value} people attended {name}."],
            ["{name} drew a crowd of {value}.", "Attendance at {name} reached {value}."],
            ["{name} welcomed {value} guests.", "A total of {value} people came to {name}."],
        ),
        "filler": (
            [
                "{name} is often mentioned in local newspapers.",
                "Little else about {name} is widely known.",
                "Several books discuss {name} in passing.",
                "Opinions about {name} differ among experts.",
            ],
            ["{name} appears in a number of regional archives.", "Historians have written about {name} at length."],
            [
                "{name} is a frequent topic of conversation in the area.",
                "Not everyone agrees on what makes {name} notable.",
            ],
        ),
    },
)

# Question templates: slot = question type -> (train, validation, test).
QUESTION_TEMPLATES = Templates(
    "kb.q",
    {
        "person.birth_year": (
            ["In what year was {a} born?", "What is the birth year of {a}?"],
            ["When was {a} born?"],
            ["Which year was {a} born in?"],
        ),
        "person.birth_city": (
            ["Where was {a} born?", "In which city was {a} born?"],
            ["What is the birthplace of {a}?"],
            ["Which city does {a} come from?"],
        ),
        "person.occupation": (
            ["What is {a}'s occupation?", "What does {a} do for a living?"],
            ["What is {a}'s profession?"],
            ["What job does {a} have?"],
        ),
        "person.studied_at": (
            ["Where did {a} study?", "Which institution did {a} attend?"],
            ["At which school was {a} trained?"],
            ["Where was {a} educated?"],
        ),
        "org.founded": (
            ["When was {a} founded?", "In what year was {a} founded?"],
            ["In which year was {a} established?"],
            ["What is the founding year of {a}?"],
        ),
        "org.founder": (
            ["Who founded {a}?", "Who is the founder of {a}?"],
            ["Who set up {a}?"],
            ["Which person started {a}?"],
        ),
        "org.hq": (
            ["In which city is {a} headquartered?", "Where is the head office of {a}?"],
            ["Where is {a} based?"],
            ["In what city does {a} have its headquarters?"],
        ),
        "org.employees": (
            ["How many people does {a} employ?", "How large is the staff of {a}?"],
            ["How many employees does {a} have?"],
            ["What is the size of {a}'s workforce?"],
        ),
        "org.field": (
            ["What does {a} specialise in?", "What field is {a} known for?"],
            ["What is the main business of {a}?"],
            ["What area does {a} concentrate on?"],
        ),
        "city.founded": (
            ["When was {a} first settled?", "In what year was {a} founded?"],
            ["When did {a} get its start?"],
            ["What year does {a} go back to?"],
        ),
        "city.population": (
            ["What is the population of {a}?", "How many people live in {a}?"],
            ["How many residents does {a} have?"],
            ["How many inhabitants does {a} have?"],
        ),
        "city.region": (
            ["In which region is {a}?", "Which region does {a} lie in?"],
            ["Where is {a} located?"],
            ["To which region does {a} belong?"],
        ),
        "product.maker": (
            ["Which company makes {a}?", "Who manufactures {a}?"],
            ["Which firm produces {a}?"],
            ["Who is the maker of {a}?"],
        ),
        "product.launched": (
            ["When was {a} launched?", "In what year did {a} go on sale?"],
            ["When was {a} released?"],
            ["In which year did {a} debut?"],
        ),
        "product.price": (
            ["How much does {a} cost?", "What is the price of {a}?"],
            ["What does {a} sell for?"],
            ["How much do buyers pay for {a}?"],
        ),
        "product.category": (
            ["What kind of product is {a}?", "What sort of device is {a}?"],
            ["What type of product is {a}?"],
            ["What is {a}, as a product?"],
        ),
        "event.year": (
            ["In what year did {a} take place?", "When was {a} held?"],
            ["When did {a} happen?"],
            ["Which year saw {a}?"],
        ),
        "event.host": (
            ["Which city hosted {a}?", "Where was {a} held?"],
            ["In which city was {a} staged?"],
            ["What city welcomed {a}?"],
        ),
        "event.organiser": (
            ["Who organised {a}?", "Which organisation ran {a}?"],
            ["Who arranged {a}?"],
            ["Who put together {a}?"],
        ),
        "event.attendance": (
            ["How many people attended {a}?", "How many visitors did {a} attract?"],
            ["How large was the crowd at {a}?"],
            ["How many guests came to {a}?"],
        ),
        "org.founder.birth_city": (
            ["In which city was the founder of {a} born?", "Where was the person who founded {a} born?"],
            ["What is the birthplace of the founder of {a}?"],
            ["Which city does the founder of {a} come from?"],
        ),
        "org.founder.birth_year": (
            ["In what year was the founder of {a} born?", "When was the founder of {a} born?"],
            ["What is the birth year of the person who set up {a}?"],
            ["Which year was the creator of {a} born in?"],
        ),
        "org.hq.region": (
            ["In which region is {a} headquartered?", "Which region is the head office of {a} in?"],
            ["In what region is the city where {a} is based?"],
            ["To which region does the headquarters city of {a} belong?"],
        ),
        "product.maker.hq": (
            ["In which city is the maker of {a} headquartered?", "Where is the company that makes {a} based?"],
            ["In what city is the firm that produces {a} based?"],
            ["Which city houses the headquarters of the manufacturer of {a}?"],
        ),
        "product.maker.founder": (
            ["Who founded the company that makes {a}?", "Who is the founder of the maker of {a}?"],
            ["Who set up the firm that produces {a}?"],
            ["Which person started the manufacturer of {a}?"],
        ),
        "product.maker.founder.birth_city": (
            [
                "In which city was the founder of the company that makes {a} born?",
                "Where was the person who founded the maker of {a} born?",
            ],
            ["What is the birthplace of the founder of the firm that produces {a}?"],
            ["Which city does the creator of the manufacturer of {a} come from?"],
        ),
        "event.organiser.founded": (
            ["When was the organiser of {a} founded?", "In what year was the organisation that ran {a} founded?"],
            ["When was the body that arranged {a} established?"],
            ["What is the founding year of the group that put together {a}?"],
        ),
        "event.host.region": (
            ["In which region is the city that hosted {a}?", "Which region was {a} held in?"],
            ["In what region was {a} staged?"],
            ["To which region does the host city of {a} belong?"],
        ),
        "person.studied_at.hq": (
            ["In which city is the institution where {a} studied?", "Where is the school that {a} attended based?"],
            ["In what city is the place where {a} was trained?"],
            ["Which city houses the institution that educated {a}?"],
        ),
        "cmp.org.founded": (
            ["Which was founded earlier, {a} or {b}?", "Which is older, {a} or {b}?"],
            ["Which was established first, {a} or {b}?"],
            ["Which came first: {a} or {b}?"],
        ),
        "cmp.person.birth_year": (
            ["Who was born first, {a} or {b}?", "Who is older, {a} or {b}?"],
            ["Which of {a} and {b} was born earlier?"],
            ["Who came into the world first: {a} or {b}?"],
        ),
        "cmp.city.population": (
            ["Which city has more inhabitants, {a} or {b}?", "Which is bigger by population, {a} or {b}?"],
            ["Which has the larger population, {a} or {b}?"],
            ["Where do more people live: {a} or {b}?"],
        ),
        "cmp.product.price": (
            ["Which costs more, {a} or {b}?", "Which is more expensive, {a} or {b}?"],
            ["Which has the higher price, {a} or {b}?"],
            ["Which is pricier: {a} or {b}?"],
        ),
        "arith.founder_age": (
            [
                "How many years after the birth of its founder was {a} founded?",
                "How old was the founder of {a} in the year it was founded?",
            ],
            ["How many years passed between the birth of {a}'s founder and the founding of {a}?"],
            ["How many years had the creator of {a} lived when {a} was founded?"],
        ),
        "arith.launch_gap": (
            [
                "How many years after its maker was founded was {a} launched?",
                "How many years passed between the founding of the maker of {a} and its launch?",
            ],
            ["How long after its producer was established was {a} released, in years?"],
            ["In years, how long after the founding of its manufacturer did {a} debut?"],
        ),
        "arith.event_gap": (
            ["How many years apart were {a} and {b}?", "How many years separate {a} and {b}?"],
            ["How many years lay between {a} and {b}?"],
            ["What is the gap, in years, between {a} and {b}?"],
        ),
        "arith.employees": (
            ["How many more people work at {a} than at {b}?", "How many more employees does {a} have than {b}?"],
            ["By how many people does the staff of {a} exceed that of {b}?"],
            ["What is the difference between the workforces of {a} and {b}?"],
        ),
    },
)
