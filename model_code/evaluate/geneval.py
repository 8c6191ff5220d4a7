"""Shapes-GenEval: GenEval's six tasks (Ghosh et al. 2023) in the Shapes world, judged by the oracle.

GenEval asks an object detector and a CLIP colour classifier whether a generated image holds what
a templated prompt names. Here the class is the shape and the judge is the oracle's scene graph,
so the numbers are exact in their domain; they are comparable to the published GenEval table only
in shape (a different domain with a perfect judge), never in value.

Tasks, templates and rules follow GenEval's `create_prompts.py` / `evaluate_images.py`:

    task           prompt (GenEval: "a photo of ...")       metadata
    single_object  "a star"                                  include star >= 1
    two_object     "a circle and a star"                     include circle >= 1, star >= 1 (distinct shapes)
    counting       "three stars"  (2..4)                     include star >= 3, exclude star >= 4
    colors         "a red star"                              include star >= 1 coloured red
    position       "a circle left of a star"                 include star >= 1; circle >= 1 at `left of` the stars
    color_attr     "a red circle and a blue star"            include red circle, blue star (distinct shapes, colours)

Rules (GenEval's `evaluate`): every include clause must hold (AND), no exclude clause may (OR).
An include takes the `count` most confident objects of its class (here: the oracle's `fit`,
the detector's score in GenEval); too few -> wrong; with a colour, at least `count` of those must
have it; with a position, every one of them must stand in the relation to every object matched by
the target clause, by GenEval's relative-position test on boxes (centre offset beyond 0.1 x the
summed box sides, then the normalised offset past 0.5 on an axis). Easel adds one rule:
an image that is not a Shapes scene (shapes.invalid_reason) is wrong, whatever it shows.
The task score is the share of correct images; overall = mean of the six tasks.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np

from model_code.data import shapes

TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
POSITION_THRESHOLD = 0.1   # GenEval's default
MAX_COUNT = 4              # GenEval counts 2..4; the Shapes world holds at most 4 objects
# the published GenEval overall scores (GenEval paper and later model reports), shown beside ours
PUBLISHED = {"minDALL-E": 0.23, "SD 1.5": 0.43, "DALL-E 2": 0.52, "SDXL": 0.55, "DALL-E 3": 0.67,
             "SD3": 0.74, "GPT Image 1": 0.84}


def _a(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


# ---------------------------------------------------------------- prompts
def make(task: str, rng: random.Random) -> dict[str, Any]:
    """One GenEval-style prompt: {"text", "include", "exclude", "objects", "cells"}; `objects` /
    `cells` describe a witness scene that satisfies it (for held-out bookkeeping and tests)."""
    cols = list(shapes.COLORS)
    if task == "single_object":
        s = rng.choice(shapes.SHAPES)
        return {"text": _a(s), "include": [{"class": s, "count": 1}], "exclude": [],
                "objects": [{"shape": s}]}
    if task == "two_object":
        a, b = rng.sample(shapes.SHAPES, 2)
        return {"text": f"{_a(a)} and {_a(b)}",
                "include": [{"class": a, "count": 1}, {"class": b, "count": 1}], "exclude": [],
                "objects": [{"shape": a}, {"shape": b}]}
    if task == "counting":
        s, n = rng.choice(shapes.SHAPES), rng.randint(2, MAX_COUNT)
        return {"text": f"{shapes.NUMBER_WORDS[n]} {shapes.PLURALS[s]}",
                "include": [{"class": s, "count": n}], "exclude": [{"class": s, "count": n + 1}],
                "objects": [{"shape": s} for _ in range(n)]}
    if task == "colors":
        s, c = rng.choice(shapes.SHAPES), rng.choice(cols)
        return {"text": _a(f"{c} {s}"), "include": [{"class": s, "count": 1, "color": c}],
                "exclude": [], "objects": [{"shape": s, "color": c}]}
    if task == "position":
        a, b = rng.sample(shapes.SHAPES, 2)
        rel = rng.choice(shapes.RELATIONS)
        cell_a, cell_b = _cells_for(rel, rng)
        return {"text": f"{_a(a)} {rel} {_a(b)}",
                "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}],
                "exclude": [], "objects": [{"shape": a}, {"shape": b}], "cells": [cell_a, cell_b]}
    if task == "color_attr":
        a, b = rng.sample(shapes.SHAPES, 2)
        ca, cb = rng.sample(cols, 2)
        return {"text": f"{_a(f'{ca} {a}')} and {_a(f'{cb} {b}')}",
                "include": [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}],
                "exclude": [], "objects": [{"shape": a, "color": ca}, {"shape": b, "color": cb}]}
    raise ValueError(f"task: must be one of {', '.join(TASKS)}, got {task!r}")


def _cells_for(rel: str, rng: random.Random) -> tuple[str, str]:
    """Cells of a and b, in one row (left/right) or column (above/below), a `rel` b."""
    rows = [shapes.CELLS[i:i + 3] for i in (0, 3, 6)]
    line = list(rng.choice(rows if rel in ("left of", "right of") else list(zip(*rows))))
    i, j = sorted(rng.sample(range(3), 2))
    return (line[i], line[j]) if rel in ("left of", "above") else (line[j], line[i])


# ---------------------------------------------------------------- the judge
def _box(o: dict) -> np.ndarray:
    h = float(o.get("extent", 0.0)) / 2
    return np.array([o["cx"] - h, o["cy"] - h, o["cx"] + h, o["cy"] + h], float)


def relative_position(a: dict, b: dict) -> set[str]:
    """GenEval's relative position of object a to object b (image coordinates, y down)."""
    boxes = np.stack([_box(a), _box(b)]).reshape(2, 2, 2)
    center_a, center_b = boxes.mean(axis=-2)
    dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - POSITION_THRESHOLD * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    out = set()
    if dx < -0.5:
        out.add("left of")
    if dx > 0.5:
        out.add("right of")
    if dy < -0.5:
        out.add("above")
    if dy > 0.5:
        out.add("below")
    return out


def judge(scene: dict, prompt: dict) -> tuple[bool, str]:
    """(correct, reason) of one parsed image against a prompt's GenEval metadata."""
    invalid = shapes.invalid_reason(scene)
    if invalid:
        return False, f"not a Shapes scene: {invalid}"
    by_class: dict[str, list[dict]] = {}
    for o in sorted(scene.get("objects", []), key=lambda o: -float(o.get("fit", 1.0))):
        by_class.setdefault(o["shape"], []).append(o)   # most confident first, as GenEval's detector
    correct, reasons, groups = True, [], []
    for req in prompt["include"]:
        cls, n = req["class"], int(req["count"])
        found = by_class.get(cls, [])[:n]
        matched = True
        if len(found) < n:
            matched = False
            reasons.append(f"expected {cls}>={n}, found {len(found)}")
        else:
            if "color" in req:
                have = [o["color"] for o in found]
                if have.count(req["color"]) < n:
                    matched = False
                    reasons.append(f"expected {req['color']} {cls}>={n}, found {', '.join(have)}")
            if "position" in req and matched:
                rel, target = req["position"]
                if groups[int(target)] is None:
                    matched = False
                    reasons.append(f"no target for {cls} to be {rel}")
                else:
                    for o in found:
                        bad = [t for t in groups[int(target)] if rel not in relative_position(o, t)]
                        if bad:
                            matched = False
                            got = relative_position(o, bad[0])
                            reasons.append(f"expected {cls} {rel} target, found {' and '.join(sorted(got)) or 'no relation'}")
                            break
        correct &= matched
        groups.append(found if matched else None)
    for req in prompt.get("exclude", []):
        cls, n = req["class"], int(req["count"])
        if len(by_class.get(cls, [])) >= n:
            correct = False
            reasons.append(f"expected {cls}<{n}, found {len(by_class[cls])}")
    return correct, "; ".join(reasons)


def overall(per_task: dict[str, float]) -> float | None:
    """Mean of the six task scores (None unless all six were measured)."""
    if not all(t in per_task for t in TASKS):
        return None
    return float(np.mean([per_task[t] for t in TASKS]))
