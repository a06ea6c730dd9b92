"""The lists world's vocabulary: its categories, their names and members."""

from __future__ import annotations

# fmt: off
CATEGORIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    # key: (singular, plural, members)
    "fruit":      ("fruit", "fruits", ("apple", "banana", "cherry", "grape", "lemon", "mango", "orange", "peach", "pear", "plum", "kiwi", "melon")),
    "planet":     ("planet", "planets", ("mercury", "venus", "earth", "mars", "jupiter", "saturn", "uranus", "neptune")),
    "color":      ("color", "colors", ("red", "blue", "green", "yellow", "purple", "pink", "brown", "black", "white", "gray", "orange", "teal")),
    "animal":     ("animal", "animals", ("dog", "cat", "horse", "cow", "lion", "tiger", "bear", "wolf", "fox", "rabbit", "deer", "goat")),
    "bird":       ("bird", "birds", ("robin", "eagle", "owl", "crow", "sparrow", "parrot", "pigeon", "swan", "duck", "hawk", "finch")),
    "fish":       ("fish", "fish", ("salmon", "trout", "tuna", "cod", "carp", "pike", "shark", "eel", "herring", "perch")),
    "vegetable":  ("vegetable", "vegetables", ("carrot", "potato", "onion", "pepper", "spinach", "cabbage", "lettuce", "celery", "pea", "bean", "garlic", "leek")),
    "country":    ("country", "countries", ("france", "spain", "italy", "germany", "japan", "china", "india", "brazil", "canada", "mexico", "egypt", "kenya")),
    "city":       ("city", "cities", ("paris", "london", "tokyo", "rome", "berlin", "madrid", "cairo", "lima", "oslo", "vienna", "dublin", "sydney")),
    "instrument": ("instrument", "instruments", ("piano", "guitar", "violin", "drum", "flute", "trumpet", "harp", "cello", "banjo", "oboe", "clarinet")),
    "sport":      ("sport", "sports", ("soccer", "tennis", "golf", "hockey", "rugby", "cricket", "boxing", "rowing", "skiing", "judo", "cycling")),
    "metal":      ("metal", "metals", ("iron", "copper", "gold", "silver", "zinc", "tin", "lead", "nickel", "platinum", "aluminum")),
    "tool":       ("tool", "tools", ("hammer", "saw", "drill", "wrench", "chisel", "pliers", "shovel", "rake", "axe", "ladder")),
    "tree":       ("tree", "trees", ("oak", "pine", "maple", "birch", "willow", "cedar", "elm", "ash", "palm", "spruce", "beech")),
    "flower":     ("flower", "flowers", ("rose", "tulip", "daisy", "lily", "orchid", "iris", "poppy", "violet", "lotus", "sunflower")),
    "drink":      ("drink", "drinks", ("water", "tea", "coffee", "milk", "juice", "soda", "cocoa", "lemonade", "wine", "beer")),
    "vehicle":    ("vehicle", "vehicles", ("car", "bus", "truck", "bicycle", "train", "boat", "plane", "tram", "van", "scooter", "taxi")),
    "body_part":  ("body part", "body parts", ("arm", "leg", "hand", "foot", "head", "nose", "ear", "eye", "knee", "elbow", "shoulder", "neck")),
}
# fmt: on

ALL_MEMBERS: frozenset[str] = frozenset(m for _, _, ms in CATEGORIES.values() for m in ms)
