"""Evaluation prompt sets from the Shapes-world grammar, one generator per category.

Categories (T2I-CompBench's, with a perfect judge; DALL-E 3 compares short and long prompts):
    color    colour binding    "a red circle and a blue square"          (2 objects, distinct colours and shapes)
    size     size binding      "a big red circle and a small blue square" (one big, one small)
    spatial  spatial relation  "a red circle to the left of a blue square" (left of / right of / above / below)
    count    counting          "three red squares"                        (1-4)
    short    short prompts     "a circle", "a red circle and a blue star" (shapes.short_caption, 1-3 objects)
    long     dense prompts     shapes.long_caption of a 3-4 object scene  (every object fully described)
and GenEval's six tasks (model_code/evaluate/geneval.py: single_object, two_object, counting, colors,
position, color_attr), whose prompts carry GenEval's include/exclude metadata under "geneval" and are
judged by GenEval's rules. DEFAULT_CATEGORIES (what an evaluation measures unless its preset names
`evaluate.categories`) are GenEval's six with size, short and long.

A prompt is a JSON-ready dict:
    {"id": "color-000", "category": "color", "text": "...",
     "objects": [{"shape", "color"?, "size"?, "cell"?}, ...],   what the text describes, nothing more
     "background": str | None,
     "scene": a full scene graph the text is true of (a witness: ground truth for tests and reports),
     "constraints": caption_parser.parse_caption(text).to_dict()}
Scoring re-parses `text` (the parser is the judge of what a prompt asks); `constraints` is stored
so that a reader of prompts.json sees what will be checked.

Held-out prompts (`heldout_prompts`): GenEval tasks keep every prompt, tagged `seen` (True when
it completely describes a training image), so that seen and held-out compositions are reported
apart. In the other categories a prompt is excluded when it is a complete, true description
of some training image, i.e. the training scene has exactly as many objects as the prompt describes
and satisfies every constraint of the prompt (the parser's own score_image on the training scene
graph). So "two red squares" is held out unless a training image shows exactly two red squares and
nothing else. Prompts that describe one object can rarely be held out: a dataset of a few hundred
images already shows every colour and shape alone, so held-out sets hold (almost) no one-object
short or count prompts; how many of each category were excluded is written to prompts.json.
"""
from __future__ import annotations

import json
import logging
import random
from collections import defaultdict
from typing import Any, Iterable

from model_code import storage
from model_code.data import shapes
from model_code.evaluate import geneval
from model_code.text.caption_parser import parse_caption, score_image

log = logging.getLogger(__name__)

EASEL_CATEGORIES = ("color", "size", "spatial", "count", "short", "long")
CATEGORIES = EASEL_CATEGORIES + geneval.TASKS   # every category a prompt set may hold
# what an evaluation measures unless its preset says otherwise: GenEval's six beside Easel's
# size binding, short and dense long prompts (color/spatial/count overlap GenEval's
# color_attr/position/counting and stay available by name)
DEFAULT_CATEGORIES = geneval.TASKS + ("size", "short", "long")
PROMPTS_FILE = "prompts.json"
FORMAT = "easel-prompts/1"
DEFAULT_SIZE = 64
MAX_TRIES_PER_PROMPT = 200   # rejection sampling budget before a category is declared exhausted

# cells for a relation, chosen in one row (left/right) or one column (above/below) so that the
# witness scene shows exactly the stated relation and no second one
_ROWS = (("top-left", "top", "top-right"), ("left", "center", "right"),
         ("bottom-left", "bottom", "bottom-right"))
_COLS = tuple(zip(*_ROWS))


# ---------------------------------------------------------------- words
def _obj_words(o: dict, size_word: str | None = None) -> str:
    """'a red circle', 'a big red circle' (size_word overrides the size's name), 'an orange star'."""
    words = " ".join(w for w in (size_word or o.get("size"), o.get("color"), o["shape"]) if w)
    return ("an " if words[0] in "aeiou" else "a ") + words


def _two_distinct(rng: random.Random) -> tuple[dict, dict]:
    """Two objects that differ in colour and in shape: swapping attributes would be visible."""
    s1, s2 = rng.sample(shapes.SHAPES, 2)
    c1, c2 = rng.sample(list(shapes.COLORS), 2)
    return {"shape": s1, "color": c1}, {"shape": s2, "color": c2}


def _fill(objects: list[dict], rng: random.Random, cells: list[str] | None = None) -> list[dict]:
    """Complete partial descriptions to full objects (random unstated size and cell)."""
    cells = cells or rng.sample(shapes.CELLS, len(objects))
    return [{"shape": o["shape"], "color": o.get("color") or rng.choice(list(shapes.COLORS)),
             "size": o.get("size") or rng.choice(list(shapes.SIZES)), "cell": c}
            for o, c in zip(objects, cells)]


# ---------------------------------------------------------------- one generator per category
# Each returns (text, objects described, background described or None, full objects of a witness).
def _color(rng):
    a, b = _two_distinct(rng)
    return f"{_obj_words(a)} and {_obj_words(b)}", [a, b], None, _fill([a, b], rng)


def _size(rng):
    a, b = _two_distinct(rng)
    a["size"], b["size"] = rng.sample(["large", "small"], 2)
    words = {"large": "big", "small": "small"}  # the user's words, as in "a big red circle"
    text = f"{_obj_words(a, words[a['size']])} and {_obj_words(b, words[b['size']])}"
    return text, [a, b], None, _fill([a, b], rng)


def _spatial(rng):
    a, b = _two_distinct(rng)
    rel = rng.choice(shapes.RELATIONS)
    line = list(rng.choice(_ROWS if rel in ("left of", "right of") else _COLS))
    i, j = sorted(rng.sample(range(3), 2))          # i before j in reading order
    cell_a, cell_b = (line[i], line[j]) if rel in ("left of", "above") else (line[j], line[i])
    phrase = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}[rel]
    return f"{_obj_words(a)} {phrase} {_obj_words(b)}", [a, b], None, _fill([a, b], rng, [cell_a, cell_b])


def _count(rng):
    # a colour with the count keeps the category large enough to hold prompts out of a dataset
    n = rng.randint(1, shapes.MAX_OBJECTS)
    o = {"shape": rng.choice(shapes.SHAPES), "color": rng.choice(list(shapes.COLORS))}
    noun = o["shape"] if n == 1 else shapes.PLURALS[o["shape"]]
    text = f"{shapes.NUMBER_WORDS[n]} {o['color']} {noun}"
    return text, [dict(o) for _ in range(n)], None, _fill([dict(o) for _ in range(n)], rng)


def _short(rng):
    n = rng.randint(1, 3)
    objs = [{"shape": rng.choice(shapes.SHAPES), "color": rng.choice(list(shapes.COLORS))} for _ in range(n)]
    if n == 1 and rng.random() < 0.5:   # the shortest prompt of all: "a circle"
        objs = [{"shape": objs[0]["shape"]}]
        return _obj_words(objs[0]), objs, None, _fill(objs, rng)
    return shapes.short_caption({"objects": objs}), objs, None, _fill(objs, rng)


def _long(rng):
    scene = shapes.sample_scene(rng, DEFAULT_SIZE, n_objects=rng.randint(3, shapes.MAX_OBJECTS))
    full = [{k: o[k] for k in ("shape", "color", "size", "cell")} for o in scene["objects"]]
    return shapes.long_caption(scene), [dict(o) for o in full], scene["background"], full


_GENERATORS = {"color": _color, "size": _size, "spatial": _spatial, "count": _count,
               "short": _short, "long": _long}


def _geneval_task(task: str):
    """A generator for one of GenEval's six tasks (model_code.evaluate.geneval)."""
    def gen(rng):
        g = geneval.make(task, rng)
        objs = [dict(o) for o in g["objects"]]
        return g["text"], objs, None, _fill(objs, rng, g.get("cells")), \
            {"include": g["include"], "exclude": g["exclude"]}
    return gen


_GENERATORS.update({t: _geneval_task(t) for t in geneval.TASKS})


# ---------------------------------------------------------------- prompt records
def make_prompt(category: str, rng: random.Random, size: int = DEFAULT_SIZE, index: int = 0) -> dict[str, Any]:
    """One prompt of a category, drawn from rng (see the module docstring for the record)."""
    if category not in _GENERATORS:
        raise ValueError(f"category: must be one of {', '.join(CATEGORIES)}, got {category!r}")
    text, objects, background, full, *ge = _GENERATORS[category](rng)
    bg = background or rng.choice(list(shapes.BACKGROUNDS))
    scene = shapes.scene_from_objects(full, size=size, background=bg, seed=rng.randrange(2 ** 31))
    out = {"id": f"{category}-{index:03d}", "category": category, "text": text,
           "objects": objects, "background": background, "scene": scene,
           "constraints": parse_caption(text).to_dict()}
    if ge:
        out["geneval"] = ge[0]   # GenEval's include/exclude metadata: judged by geneval.judge
    return out


def _check_args(n_per_category: int, categories: Iterable[str]) -> list[str]:
    if not isinstance(n_per_category, int) or n_per_category < 1:
        raise ValueError(f"n_per_category: must be a positive integer, got {n_per_category!r}")
    cats = list(categories)
    bad = [c for c in cats if c not in _GENERATORS]
    if bad or not cats:
        raise ValueError(f"categories: must be a non-empty subset of {', '.join(CATEGORIES)}, got {cats}")
    return cats


def _category_rng(seed: int, category: str) -> random.Random:
    # one stream per category: adding a category never changes the others' prompts
    return random.Random(f"easel-prompts:{seed}:{category}")


def _draw(category: str, n: int, seed: int, size: int, reject=None) -> tuple[list[dict], dict]:
    """Up to n distinct prompts of a category; `reject(prompt) -> bool` excludes some."""
    rng = _category_rng(seed, category)
    if category == "single_object":   # GenEval asks each class once; the world has five shapes
        n = min(n, len(shapes.SHAPES))
    out, seen, excluded, tries = [], set(), 0, 0
    while len(out) < n and tries < MAX_TRIES_PER_PROMPT * n:
        tries += 1
        p = make_prompt(category, rng, size, len(out))
        if p["text"] in seen:
            continue
        seen.add(p["text"])
        if reject is not None and reject(p):
            excluded += 1
            continue
        out.append(p)
    stats = {"requested": n, "found": len(out), "excluded": excluded, "tries": tries,
             "exhausted": len(out) < n}
    if len(out) < n:
        log.warning("only %d of %d %s prompts found (%d excluded as seen in training)",
                    len(out), n, category, excluded)
    return out, stats


def prompt_set(n_per_category: int, seed: int = 0, categories: Iterable[str] = DEFAULT_CATEGORIES,
               size: int = DEFAULT_SIZE) -> list[dict]:
    """n distinct prompts per category, deterministic for a seed (no held-out exclusion)."""
    cats = _check_args(n_per_category, categories)
    return [p for c in cats for p in _draw(c, n_per_category, seed, size)[0]]


# ---------------------------------------------------------------- held out from a dataset
def described_objects(prompt: dict) -> int:
    return len(prompt["objects"])


def describes_scene(prompt: dict, scene: dict, constraints=None) -> bool:
    """True when the prompt is a complete, true description of `scene`: as many objects as the
    prompt describes, and every constraint of the prompt satisfied (background included)."""
    if len(scene.get("objects", [])) != described_objects(prompt):
        return False
    return bool(score_image(scene, constraints or parse_caption(prompt["text"]))["exact"])


class TrainingScenes:
    """The training split's scene graphs, indexed by their multiset of shapes (every prompt names
    its shapes, so only scenes with the same shapes can match)."""

    def __init__(self, scenes: Iterable[dict]):
        self.by_shapes: dict[tuple, list[dict]] = defaultdict(list)
        self.n = 0
        for s in scenes:
            self.by_shapes[tuple(sorted(o["shape"] for o in s.get("objects", [])))].append(s)
            self.n += 1

    def seen(self, prompt: dict) -> bool:
        key = tuple(sorted(o["shape"] for o in prompt["objects"]))
        cands = self.by_shapes.get(key, ())
        if not cands:
            return False
        c = parse_caption(prompt["text"])
        return any(describes_scene(prompt, s, c) for s in cands)

    @classmethod
    def from_dataset(cls, dataset_dir: str) -> "TrainingScenes":
        from model_code.data.dataset import manifest
        df = manifest(dataset_dir)
        for col in ("split", "scene"):
            if col not in df.columns:
                raise ValueError(f"dataset_dir: the manifest of {dataset_dir} has no {col!r} column")
        rows = df[(df["split"] == "train") & df["scene"].notna()]["scene"]
        return cls(json.loads(s) for s in rows)


def _dataset_size(dataset_dir: str) -> int:
    from model_code.data.dataset import manifest
    w = manifest(dataset_dir)["width"]
    return int(w.mode().iloc[0]) if len(w) else DEFAULT_SIZE


def heldout_prompts(dataset_dir: str, n_per_category: int, seed: int = 0,
                    categories: Iterable[str] = DEFAULT_CATEGORIES, out: str | None = None) -> list[dict]:
    """Prompts none of which completely describes a training image of the dataset, written to
    `out` (default: prompts.json inside dataset_dir, beside its manifest). A category whose
    held-out prompts run out keeps what it found; prompts.json records the shortfall."""
    cats = _check_args(n_per_category, categories)
    train = TrainingScenes.from_dataset(dataset_dir)
    size = _dataset_size(dataset_dir)
    prompts, stats = [], {}
    for c in cats:
        if c in geneval.TASKS:
            # GenEval's one-object prompts cannot be held out of any dataset (every shape and
            # colour is seen alone): keep them all, tagged, and report seen and held out apart
            got, stats[c] = _draw(c, n_per_category, seed, size)
            for p in got:
                p["seen"] = train.seen(p)
            stats[c]["seen"] = sum(p["seen"] for p in got)
        else:
            got, stats[c] = _draw(c, n_per_category, seed, size, reject=train.seen)
        prompts += got
    write_prompts(prompts, out or storage.join(dataset_dir, PROMPTS_FILE),
                  {"dataset": dataset_dir, "seed": seed, "n_per_category": n_per_category,
                   "categories": cats, "training_scenes": train.n, "per_category": stats,
                   "dataset_content_hash": _content_hash(dataset_dir)})
    return prompts


def _content_hash(dataset_dir: str) -> str | None:
    """dataset.json's content hash: which data the prompts were held out from."""
    from model_code.data.dataset import read_meta
    return read_meta(dataset_dir).get("content_hash")


# ---------------------------------------------------------------- files
def write_prompts(prompts: list[dict], uri: str, meta: dict | None = None) -> str:
    body = {"format": FORMAT, **(meta or {}), "prompts": prompts}
    storage.write_text(uri, json.dumps(body, indent=1, sort_keys=False, default=str))
    return uri


def read_prompts(uri: str) -> tuple[list[dict], dict]:
    """(prompts, metadata) of a prompts.json."""
    if not storage.exists(uri):
        raise FileNotFoundError(f"no prompt set at {uri}")
    body = json.loads(storage.read_text(uri))
    if body.get("format") != FORMAT or not isinstance(body.get("prompts"), list):
        raise ValueError(f"{uri}: not an Easel prompt set (format {body.get('format')!r})")
    for i, p in enumerate(body["prompts"]):
        missing = [k for k in ("category", "text", "objects") if k not in p]
        if missing:
            raise ValueError(f"{uri}: prompts[{i}] lacks {', '.join(missing)}")
    meta = {k: v for k, v in body.items() if k != "prompts"}
    return body["prompts"], meta


def by_category(prompts: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for p in prompts:
        out.setdefault(p["category"], []).append(p)
    return out
