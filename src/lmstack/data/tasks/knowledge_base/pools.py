"""The raw material of the fictional world: syllables for invented names, name endings, and the values
attributes are drawn from (occupations, fields, product categories), plus the kinds of document per entity.
"""

from __future__ import annotations

ONSETS = [
    "b",
    "d",
    "f",
    "g",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "br",
    "dr",
    "gr",
    "kr",
    "tr",
    "th",
    "st",
    "sk",
    "vr",
]
SIMPLE_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "r", "s", "t", "v", "z"]
VOWELS = ["a", "e", "i", "o", "u", "a", "e", "o", "ae", "ei", "ou"]
CODAS = ["", "n", "r", "l", "s", "th", "x", "m", "nd", "rk", "sk", "v", "t"]
GIVEN_ENDS = ["a", "o", "en", "is", "et", "ian", "ira", "ek", "ova", "in", "eth", "ara"]
CITY_ENDS = ["ossa", "undra", "ethe", "ivar", "arum", "enholt", "oreth", "avik", "usk", "elle"]
REGION_KINDS = ["Highlands", "Coast", "Basin", "Marches", "Vale", "Steppe", "Lowlands", "Reach"]
COMPANY_KINDS = ["Instruments", "Analytics", "Foundry", "Robotics", "Textiles", "Shipping", "Press", "Optics"]
INSTITUTE_KINDS = ["Institute", "Academy", "Observatory", "College", "Conservatory"]
EVENT_KINDS = ["Festival", "Summit", "Regatta", "Symposium", "Fair", "Exposition", "Games", "Congress"]
MODEL_WORDS = [
    "Prism",
    "Vane",
    "Beacon",
    "Loom",
    "Compass",
    "Lantern",
    "Anvil",
    "Harbor",
    "Meridian",
    "Kestrel",
    "Atlas",
    "Sable",
    "Quill",
    "Spindle",
    "Orbit",
    "Cinder",
]
OCCUPATIONS = [
    "engineer",
    "botanist",
    "cartographer",
    "composer",
    "chemist",
    "architect",
    "economist",
    "glassblower",
    "astronomer",
    "historian",
    "sculptor",
    "geologist",
    "linguist",
    "surgeon",
    "navigator",
    "printer",
]
FIELDS = [
    "optical sensors",
    "river freight",
    "textile dyes",
    "weather forecasting",
    "glass lenses",
    "rail signalling",
    "seed banking",
    "bell casting",
    "paper restoration",
    "water filtration",
    "clockmaking",
    "map printing",
    "ceramic tiles",
    "wind turbines",
    "medical imaging",
    "acoustic design",
]
CATEGORIES = [
    "telescope",
    "bicycle",
    "synthesizer",
    "sewing machine",
    "camera",
    "kettle",
    "drone",
    "barometer",
    "typewriter",
    "metronome",
    "lamp",
    "compass",
    "microscope",
    "loudspeaker",
    "water pump",
]
DOC_KINDS = {
    "person": ["biography", "profile", "archive note"],
    "org": ["overview", "press release", "directory entry"],
    "city": ["gazetteer entry", "travel guide"],
    "product": ["catalogue entry", "review"],
    "event": ["report", "programme note"],
}
