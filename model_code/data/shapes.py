"""The Shapes world: a synthetic image-text domain whose truth is known.

One module holds the world's vocabulary, the scene sampler, the renderer and the caption
writers, so that the oracle (data/oracle.py) and the caption parser (text/caption_parser.py)
read the same vocabulary the generator writes. See DESIGN.md, "The Shapes world".

A scene graph is a plain dict (JSON-ready):
    {"size": S, "background": "white",
     "objects": [{"shape", "color", "size", "cell", "cx", "cy", "extent"}, ...]}
"""
from __future__ import annotations

import math
import random
from typing import Any

from PIL import Image, ImageDraw

# ---------------------------------------------------------------- vocabulary
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (248, 248, 248),
    "beige": (235, 225, 200),
    "gray": (205, 205, 205),
    "light blue": (200, 225, 245),
}
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 210, 30),
    "green": (40, 160, 70),
    "cyan": (30, 180, 200),
    "blue": (40, 70, 210),
    "purple": (140, 60, 190),
    "black": (25, 25, 25),
}
SHAPES = ("circle", "square", "triangle", "star", "cross")
SIZES: dict[str, float] = {"small": 0.18, "large": 0.30}  # bounding-box side as a fraction of S
CELLS = ("top-left", "top", "top-right", "left", "center", "right",
         "bottom-left", "bottom", "bottom-right")
JITTER = 0.04  # max centre offset, fraction of S
MAX_OBJECTS = 4
# an oracle parse whose canvas is more than this share "something" outside every object is not a
# Shapes scene (measured: 0 on clean and blur+JPEG renders, <= 0.13 with Gaussian noise of sigma 20
# RGB units, >= 0.88 on uniform noise)
MAX_CLUTTER = 0.2
SUPERSAMPLE = 4  # render at 4x and box-filter down: anti-aliased edges, deterministic

# Plurals and number words shared by the caption writers and the parser.
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles",
           "star": "stars", "cross": "crosses"}
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}

# How people name a cell; the first phrase is the canonical one.
CELL_PHRASES: dict[str, tuple[str, ...]] = {
    "top-left": ("in the top left", "in the upper left corner", "at the top left"),
    "top": ("at the top", "at the top middle", "in the top center"),
    "top-right": ("in the top right", "in the upper right corner", "at the top right"),
    "left": ("on the left", "at the middle left", "on the left side"),
    "center": ("in the center", "in the middle", "at the center"),
    "right": ("on the right", "at the middle right", "on the right side"),
    "bottom-left": ("in the bottom left", "in the lower left corner", "at the bottom left"),
    "bottom": ("at the bottom", "at the bottom middle", "in the bottom center"),
    "bottom-right": ("in the bottom right", "in the lower right corner", "at the bottom right"),
}
# Synonyms a person might use; the parser maps them back.
SHAPE_SYNONYMS = {"circle": ("circle", "disc", "dot"), "square": ("square", "box"),
                  "triangle": ("triangle",), "star": ("star",), "cross": ("cross", "plus sign")}
SIZE_SYNONYMS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
RELATIONS = ("left of", "right of", "above", "below")


def cell_rc(cell: str) -> tuple[int, int]:
    """(row, col) of a cell in the 3x3 grid."""
    i = CELLS.index(cell)
    return i // 3, i % 3


def relation(a: dict, b: dict) -> list[str]:
    """Relations of object a to object b that follow from their cells."""
    ra, ca = cell_rc(a["cell"])
    rb, cb = cell_rc(b["cell"])
    out = []
    if ca < cb:
        out.append("left of")
    if ca > cb:
        out.append("right of")
    if ra < rb:
        out.append("above")
    if ra > rb:
        out.append("below")
    return out


# ---------------------------------------------------------------- sampling
def sample_scene(rng: random.Random, size: int = 64, n_objects: int | None = None) -> dict[str, Any]:
    """A random scene: 1-4 objects, one per cell, jittered centres, no overlaps."""
    if not 8 <= size <= 4096:
        raise ValueError(f"canvas size must be in [8, 4096], got {size}")
    n = n_objects if n_objects is not None else rng.randint(1, MAX_OBJECTS)
    if not 1 <= n <= MAX_OBJECTS:
        raise ValueError(f"n_objects must be 1..{MAX_OBJECTS}, got {n}")
    cells = rng.sample(CELLS, n)
    objs = []
    for cell in cells:
        objs.append({"shape": rng.choice(SHAPES), "color": rng.choice(list(COLORS)),
                     "size": rng.choice(list(SIZES)), "cell": cell})
    scene = {"size": size, "background": rng.choice(list(BACKGROUNDS)), "objects": objs}
    place(scene, rng)
    return scene


def place(scene: dict, rng: random.Random | None = None) -> dict:
    """Give every object pixel geometry (cx, cy, extent); jitter without overlaps.

    Adjacent large objects can touch under full jitter, so the jitter is re-drawn (and in the
    end dropped) until bounding boxes keep a margin of 0.03 S.
    """
    S = scene["size"]
    rng = rng or random.Random(0)
    objs = scene["objects"]
    for o in objs:
        o["extent"] = round(SIZES[o["size"]] * S, 3)
    for attempt in range(30):
        amp = JITTER * S if attempt < 29 else 0.0
        for o in objs:
            r, c = cell_rc(o["cell"])
            o["cx"] = round((c + 0.5) * S / 3 + rng.uniform(-amp, amp), 3)
            o["cy"] = round((r + 0.5) * S / 3 + rng.uniform(-amp, amp), 3)
        if not _overlaps(objs, margin=0.03 * S):
            break
    return scene


def _overlaps(objs: list[dict], margin: float) -> bool:
    for i, a in enumerate(objs):
        for b in objs[i + 1:]:
            lim = (a["extent"] + b["extent"]) / 2 + margin
            if abs(a["cx"] - b["cx"]) < lim and abs(a["cy"] - b["cy"]) < lim:
                return True
    return False


def scene_from_objects(objects: list[dict], size: int = 64, background: str = "white",
                       seed: int = 0) -> dict:
    """A scene from (shape, color, size, cell) descriptions, e.g. to render a prompt's truth."""
    cells = [o["cell"] for o in objects]
    if len(set(cells)) != len(cells):
        raise ValueError("two objects in one cell")
    scene = {"size": size, "background": background,
             "objects": [{k: o[k] for k in ("shape", "color", "size", "cell")} for o in objects]}
    return place(scene, random.Random(seed))


# ---------------------------------------------------------------- rendering
def shape_polygons(shape: str, cx: float, cy: float, e: float) -> list[list[tuple[float, float]]]:
    """Polygons (or an ellipse bbox for circles, as a 2-point list) of one shape, in pixels."""
    h = e / 2
    if shape == "circle":
        return [[(cx - h, cy - h), (cx + h, cy + h)]]
    if shape == "square":
        return [[(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]]
    if shape == "triangle":  # apex up, base at the bottom of the box
        return [[(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)]]
    if shape == "star":  # 5 points, first point up; inner radius from the regular pentagram
        outer, inner = h, h * 0.382
        # centre the star's bounding box vertically (its top is R above, bottom R*cos36 below)
        oy = cy + h * (1 - math.cos(math.pi / 5)) / 2
        pts = []
        for k in range(10):
            r = outer if k % 2 == 0 else inner
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + r * math.cos(a), oy + r * math.sin(a)))
        return [pts]
    if shape == "cross":  # plus sign, arm thickness one third of the box
        t = e / 6
        return [[(cx - t, cy - h), (cx + t, cy - h), (cx + t, cy + h), (cx - t, cy + h)],
                [(cx - h, cy - t), (cx + h, cy - t), (cx + h, cy + t), (cx - h, cy + t)]]
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: dict, size: int | None = None) -> Image.Image:
    """Render a scene graph to an RGB image (anti-aliased by supersampling)."""
    S = scene["size"]
    out = size or S
    k = SUPERSAMPLE * out / S
    img = Image.new("RGB", (out * SUPERSAMPLE, out * SUPERSAMPLE), BACKGROUNDS[scene["background"]])
    draw = ImageDraw.Draw(img)
    for o in scene["objects"]:
        fill = COLORS[o["color"]]
        for poly in shape_polygons(o["shape"], o["cx"] * k, o["cy"] * k, o["extent"] * k):
            if o["shape"] == "circle":
                draw.ellipse(poly, fill=fill)
            else:
                draw.polygon(poly, fill=fill)
    return img.resize((out, out), Image.BOX)


# ---------------------------------------------------------------- captions
def _count_phrase(n: int, noun_sg: str, noun_pl: str) -> str:
    return f"{'a' if n == 1 else NUMBER_WORDS[n]} {noun_sg if n == 1 else noun_pl}"


def describe_object(o: dict, with_size: bool = True, with_article: bool = True) -> str:
    words = ([o["size"]] if with_size else []) + [o["color"], o["shape"]]
    text = " ".join(words)
    return (("an " if text[0] in "aeiou" else "a ") + text) if with_article else text


def short_caption(scene: dict) -> str:
    """A short truthful caption (~5-20 tokens): colours and shapes, no geometry."""
    objs = scene["objects"]
    parts = [describe_object(o, with_size=False) for o in objs]
    return _join(parts)


def long_caption(scene: dict) -> str:
    """The canonical full description: count, each object's size/colour/shape/cell,
    relations between consecutive objects, and the background."""
    objs = scene["objects"]
    n = len(objs)
    head = (f"{NUMBER_WORDS[n].capitalize()} shape{'s' if n > 1 else ''} on a "
            f"{scene['background']} background: ")
    items = [f"{describe_object(o)} {CELL_PHRASES[o['cell']][0]}" for o in objs]
    text = head + _join(items) + "."
    for a, b in zip(objs, objs[1:]):
        rel = relation(a, b)
        if rel:
            text += (f" The {a['color']} {a['shape']} is {' and '.join(_rel_words(rel))} "
                     f"the {b['color']} {b['shape']}.")
    return text


def _rel_words(rel: list[str]) -> list[str]:
    return [("to the " + r) if r in ("left of", "right of") else r for r in rel]


def _join(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def curated_caption(scene: dict, rng: random.Random) -> str:
    """A careful descriptive caption as a person would write it: every fact, varied wording
    (synonyms, order, sentence shapes). Always truthful and complete."""
    objs = list(scene["objects"])
    rng.shuffle(objs)
    n = len(objs)
    bg = scene["background"]
    opener = rng.choice([
        f"{NUMBER_WORDS[n].capitalize()} shape{'s' if n > 1 else ''} on a {bg} background.",
        f"A {bg} canvas with {NUMBER_WORDS[n]} shape{'s' if n > 1 else ''}.",
        f"On a plain {bg} background there {'is' if n == 1 else 'are'} "
        f"{NUMBER_WORDS[n]} shape{'s' if n > 1 else ''}.",
        f"This image shows {NUMBER_WORDS[n]} flat shape{'s' if n > 1 else ''} against a {bg} background.",
    ])
    sents = [opener]
    for i, o in enumerate(objs):
        size = rng.choice(SIZE_SYNONYMS[o["size"]])
        shape = o["shape"] if rng.random() < 0.8 else rng.choice(SHAPE_SYNONYMS[o["shape"]])
        where = rng.choice(CELL_PHRASES[o["cell"]])
        art = "An" if size[0] in "aeiou" else "A"
        sents.append(rng.choice([
            f"{art} {size} {o['color']} {shape} sits {where}.",
            f"{where.capitalize()} there is a {size} {o['color']} {shape}.",
            f"{art} {size} {shape} in {o['color']} is {where}.",
        ]))
    if n > 1 and rng.random() < 0.8:
        a, b = rng.sample(objs, 2)
        rel = relation(a, b)
        if rel:
            sents.append(f"The {a['color']} {a['shape']} is {' and '.join(_rel_words(rel))} "
                         f"the {b['color']} {b['shape']}.")
    return " ".join(sents)


_SLOGANS = ("Shop the new collection!", "Free shipping on all orders", "Best wallpaper 2021",
            "click here for more", "Limited time offer", "stock photo", "untitled",
            "image", "thumbnail", "Download now", "background pattern", "logo design ideas")


def alt_text(scene: dict, rng: random.Random, key: str = "") -> str:
    """Web alt-text, like the seeds' examples: mostly useless or wrong.

    Mix: file names, slogans, a terse half-truth, a wrong colour, a wrong count, and
    only rarely something close to right.
    """
    objs = scene["objects"]
    o = rng.choice(objs)
    r = rng.random()
    if r < 0.2:
        return rng.choice([f"IMG_{rng.randint(1000, 9999)}.jpg", f"DSC{rng.randint(10000, 99999)}.JPG",
                           f"{key or 'image'}_final_v{rng.randint(1, 9)}.png", "Screenshot 2019-03-02.png"])
    if r < 0.4:
        return rng.choice(_SLOGANS)
    if r < 0.6:  # terse half-truth: one shape, nothing else
        return rng.choice([o["shape"], f"{o['shape']} icon", f"{o['shape']} clipart", "shapes"])
    if r < 0.75:  # a wrong colour
        wrong = rng.choice([c for c in COLORS if c != o["color"]])
        return rng.choice([f"{wrong} {o['shape']}", f"a {wrong} {o['shape']} on white"])
    if r < 0.9:  # a wrong count
        n = len(objs)
        wrong_n = rng.choice([k for k in range(1, 6) if k != n])
        return f"{wrong_n} {PLURALS[o['shape']] if wrong_n > 1 else o['shape']}"
    return f"{o['color']} {o['shape']}"  # close to right, still incomplete


def invalid_reason(scene: dict) -> str | None:
    """Why a scene graph is not a Shapes-world scene (None when it is one): the world has 1 to
    MAX_OBJECTS objects, one per grid cell. The judge of prompt following scores an invalid scene
    as meeting no constraint, so that noise (which an oracle may read as dozens of "objects") and
    blank canvases never score."""
    objs = scene.get("objects") or []
    if not objs:
        return "no object"
    if len(objs) > MAX_OBJECTS:
        return f"{len(objs)} objects (at most {MAX_OBJECTS})"
    cells = [o["cell"] for o in objs if o.get("cell")]
    dup = sorted({c for c in cells if cells.count(c) > 1})
    if dup:
        return f"two objects in one cell ({', '.join(dup)})"
    if scene.get("clutter", 0.0) > MAX_CLUTTER:
        return f"{scene['clutter']:.0%} of the canvas is neither background nor an object"
    return None


def parse_scene(value: Any) -> dict | None:
    """A scene graph as stored anywhere (a dict, the manifest's JSON text, or None / NaN / "" for
    a record without one) -> the dict, or None. The one decoder of stored scenes."""
    if isinstance(value, str):
        import json
        value = json.loads(value) if value.strip() else None
    return value if isinstance(value, dict) else None


def facts(scene: dict) -> set[tuple]:
    """The atomic facts of a scene: what a complete caption states. Used to score captions.

    ("count", n), ("background", b), ("object", size, color, shape), ("at", color, shape, cell),
    ("rel", color_a, shape_a, relation, color_b, shape_b)."""
    objs = scene["objects"]
    out: set[tuple] = {("count", len(objs)), ("background", scene["background"])}
    for o in objs:
        out.add(("object", o["size"], o["color"], o["shape"]))
        out.add(("at", o["color"], o["shape"], o["cell"]))
    for a in objs:
        for b in objs:
            if a is not b:
                for r in relation(a, b):
                    out.add(("rel", a["color"], a["shape"], r, b["color"], b["shape"]))
    return out
