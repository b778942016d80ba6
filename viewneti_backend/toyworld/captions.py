"""Captions for toy renders: what the object is, and for a fraction of them a *coarse* view phrase.

The view phrase only names an azimuth bucket (8 directions of 45 degrees) and an elevation bucket
(3 bands), never the exact pose, like the 2D captions SD learned from. ViewNeTI must then find
continuous view control in the prior on its own.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from .renderer import COLOR_NAMES, KINDS, ToyObject

SIDE_PHRASE = {
    "left": "on its left side",
    "right": "on its right side",
    "front": "on its front",
    "back": "on its back",
    "top": "on top",
}
ACCENT_PHRASE = {"left": "left side", "right": "right side", "front": "front", "back": "back"}
AZIMUTH_BUCKETS = ("front", "front right", "right", "back right", "back", "back left", "left", "front left")
ELEVATION_BUCKETS = ((23.0, "from a low angle"), (37.0, "from slightly above"), (91.0, "from high above"))
PREFIXES = ("", "", "a photo of ", "a render of ", "a picture of ", "an image of ")
GENERIC = ("a photo of an object", "a toy object", "an object on the ground", "a photo of a toy", "a small toy object")

# Words the captions use, plus the prompt words of ViewNeTI and some general ones; every word here
# is a single token of the toy tokenizer (see tokenizer.py).
EXTRA_WORDS = """
a an the of photo picture image render rendering view views object objects thing toy toys small large big
little seen from with and on in at its it is of to by top side sides left right front back above below
low high slightly angle eye level ground floor plane grey gray checker checkered sky shadow scene
camera shot close far near behind beside next under over middle center centre one two three four
made shape shapes colored coloured color colour part parts piece pieces bright dark light simple
cube cubes block blocks ball balls sphere spheres box boxes cylinder cylinders cone cones pyramid
round square flat tall short wide narrow long edge edges face faces corner corners base roof tower house
table chair car robot figure sculpture statue stack pile group set pair single double triple
matte shiny glossy plastic wooden wood metal stone paper painted surface texture pattern
day night morning evening bright soft hard strong weak warm cool
first second third fourth other another each every all some many few no not only also
looking facing turned rotated around toward towards away into onto out up down inside outside
north south east west upper lower rear
white black brown gray pink purple red orange yellow green cyan blue
of this that these there here very sitting standing resting lying placed stuck attached
model scene lit lighting sun sunny day render rendered clean plain high quality photo photograph
""".split()


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def part_phrase(color: str, kind: str) -> str:
    return f"{_a(color)} {color} {kind}"


def describe(obj: ToyObject, rng: random.Random | None = None, *, partial: bool = False) -> str:
    """'a red box with a yellow front, a blue sphere on its left side and a green cone on top'.

    ``partial``: mention a random subset of the details (captions are incomplete, as in real data).
    """
    rng = rng or random.Random(0)
    body = obj.body
    items = []
    if obj.accent and (not partial or rng.random() < 0.5):
        items.append(f"{_a(obj.accent['color'])} {obj.accent['color']} {ACCENT_PHRASE[obj.accent['side']]}")
    for p in obj.attachments:
        if not partial or rng.random() < 0.5:
            items.append(f"{part_phrase(p.color, p.kind)} {SIDE_PHRASE[p.side]}")
    text = part_phrase(body.color, body.kind)
    if items:
        text += " with " + (items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1])
    return text


def azimuth_bucket(azimuth_deg: float) -> str:
    """Which side of the object the camera sees: azimuth 0 = front (camera at -Y), 90 = right (+X)."""
    return AZIMUTH_BUCKETS[int(((azimuth_deg % 360.0) + 22.5) // 45.0) % 8]


def elevation_bucket(elevation_deg: float) -> str:
    for limit, phrase in ELEVATION_BUCKETS:
        if elevation_deg < limit:
            return phrase
    return ELEVATION_BUCKETS[-1][1]


def view_phrase(azimuth_deg: float, elevation_deg: float) -> str:
    """Coarse view phrase, e.g. 'seen from the front left, from slightly above'."""
    return f"seen from the {azimuth_bucket(azimuth_deg)}, {elevation_bucket(elevation_deg)}"


def caption(
    obj: ToyObject,
    azimuth_deg: float,
    elevation_deg: float,
    rng: random.Random,
    *,
    p_view: float = 0.3,
    p_partial: float = 0.2,
    p_generic: float = 0.04,
) -> str:
    """One training caption for a render of ``obj`` seen from (azimuth, elevation)."""
    u = rng.random()
    if u < p_generic:
        text = rng.choice(GENERIC)
    else:
        text = rng.choice(PREFIXES) + describe(obj, rng, partial=rng.random() < p_partial)
    if rng.random() < p_view:
        text += ", " + view_phrase(azimuth_deg, elevation_deg)
    return text


def captions_for(
    objs: Sequence[ToyObject], azimuths: Sequence[float], elevations: Sequence[float], rng: random.Random, **kwargs
) -> list[str]:
    return [caption(o, float(a), float(e), rng, **kwargs) for o, a, e in zip(objs, azimuths, elevations)]


def vocabulary() -> list[str]:
    """Every word a caption can contain, plus the prompt and extra words (sorted, unique)."""
    words = set(EXTRA_WORDS) | set(COLOR_NAMES) | set(KINDS)
    for s in (
        list(SIDE_PHRASE.values())
        + list(ACCENT_PHRASE.values())
        + list(AZIMUTH_BUCKETS)
        + list(PREFIXES)
        + list(GENERIC)
    ):
        words.update(s.split())
    for _, p in ELEVATION_BUCKETS:
        words.update(p.split())
    words.update(view_phrase(0, 0).replace(",", "").split())
    return sorted(w for w in words if w)
