"""Shapes-world English -> constraints, and scoring of captions and images against them.

`parse_caption` reads a prompt or a caption ("two red crosses on a beige background", the
generator's long/curated captions with all their synonyms) into `Constraints`: objects, counts,
relations and background. Unknown words are skipped, never errors. Two uses:

* recaption quality: `caption_facts(text)` states the text's facts in the vocabulary of
  `shapes.facts(scene)`, and `score_caption(text, scene)` gives precision / recall / hallucination;
* prompt following: `score_image(oracle_parse_of_generated_image, parse_caption(prompt))` checks
  every constraint (an object exists, a count is exact, a relation holds between objects that
  match the two descriptions, the background).

Grammar, in one pass over the words of each sentence:
  noun phrase  = [a|an|the|number] {size | colour | unknown word}* shape-noun ["in" colour]
  cell phrase  = [in|at|on|to] [the] position-word{1,2} [corner|side|...] [of the image]
  relation     = (to the | on the)? (left|right) of | above | over | on top of | below | under | ...
  background   = background-colour [background|canvas|backdrop]
A cell phrase belongs to the nearest noun phrase before it in the sentence that has no cell yet,
else to the next one ("In the top left there is a red circle"); a relation joins the nearest noun
phrase before it and the next one after it; "the red circle" refers back to an earlier object.
"""
from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable

from model_code.data import shapes

# ---------------------------------------------------------------- lexicon (from the world's vocabulary)
_SHAPE_WORDS: dict[str, tuple[str, bool]] = {}   # word -> (shape, plural?)
for _shape, _syns in shapes.SHAPE_SYNONYMS.items():
    for _w in _syns + (_shape,):
        if " " in _w:
            continue  # multi-word synonyms ("plus sign") are matched as phrases below
        _SHAPE_WORDS[_w] = (_shape, False)
        _plural = shapes.PLURALS.get(_w, _w + ("es" if _w.endswith(("s", "x")) else "s"))  # boxes
        _SHAPE_WORDS[_plural] = (_shape, True)
_SHAPE_WORDS.update({"disk": ("circle", False), "disks": ("circle", True)})
_SHAPE_PHRASES = {("plus", "sign"): ("cross", False), ("plus", "signs"): ("cross", True)}
_GENERIC_NOUNS = {"shape", "shapes", "object", "objects", "figure", "figures", "item", "items",
                  "thing", "things"}
_SIZE_WORDS = {w: s for s, ws in shapes.SIZE_SYNONYMS.items() for w in ws + (s,)}
_SIZE_WORDS.update({"huge": "large"})
_COLOR_WORDS = {c: c for c in shapes.COLORS}
# common names for the palette's colours (a user's "crimson circle" is the world's red one); a
# colour the palette has no near twin for ("pink", "teal", "brown") stays unknown, and the
# rewriter keeps a prompt that uses one as written (serve/rewrite.unknown_words)
_COLOR_WORDS.update({"violet": "purple", "crimson": "red", "scarlet": "red", "golden": "yellow",
                     "gold": "yellow", "lime": "green", "turquoise": "cyan", "aqua": "cyan",
                     "navy": "blue"})
_BG_BY_FIRST = {"light": [(("light", "blue"), "light blue")], "white": [(("white",), "white")],
                "beige": [(("beige",), "beige")], "gray": [(("gray",), "gray")],
                "grey": [(("grey",), "gray")]}
_BG_NOUNS = {"background", "backdrop", "canvas"}
_NUMBERS = {w: n for n, w in shapes.NUMBER_WORDS.items()}
_NUMBERS.update({"five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
                 "single": 1, "no": 0, "zero": 0})
_MAX_NUMBER = 99  # "IMG_1354" is not a count
# words that end a noun phrase under construction ("a red and a blue ...", "red, blue")
_BREAK_WORDS = {"and", "or", "with", "is", "are", "sits", "sit", "there", "of", "than", "but",
                "has", "have", "shows", "show", "against", "on", "at", "to", "in", "it", "its"}

_POS_ROW = {"top": 0, "upper": 0, "bottom": 2, "lower": 2, "middle": 1, "center": 1, "centre": 1}
_POS_COL = {"left": 0, "right": 2, "middle": 1, "center": 1, "centre": 1}
_POS_SINGLE = {"top": (0, 1), "upper": (0, 1), "bottom": (2, 1), "lower": (2, 1),
               "left": (1, 0), "right": (1, 2), "middle": (1, 1), "center": (1, 1),
               "centre": (1, 1)}
_CELL_TAILS = {"corner", "side", "edge", "part", "area", "region", "half"}
_FRAME_NOUNS = {"image", "picture", "canvas", "frame", "scene", "photo"}
_PREPS = {"in", "at", "on", "to"}
_CELL_FIRST = _PREPS | {"the"} | set(_POS_SINGLE)

# relation phrases, longest first; each maps to shapes.RELATIONS
_REL_PHRASES: list[tuple[tuple[str, ...], str]] = sorted([
    (("to", "the", "left", "of"), "left of"), (("on", "the", "left", "of"), "left of"),
    (("left", "of"), "left of"),
    (("to", "the", "right", "of"), "right of"), (("on", "the", "right", "of"), "right of"),
    (("right", "of"), "right of"),
    (("above",), "above"), (("over",), "above"), (("on", "top", "of"), "above"), (("atop",), "above"),
    (("below",), "below"), (("under",), "below"), (("underneath",), "below"),
    (("beneath",), "below"),
], key=lambda p: -len(p[0]))
_REL_BY_FIRST: dict[str, list[tuple[tuple[str, ...], str]]] = {}
for _words, _rel in _REL_PHRASES:
    _REL_BY_FIRST.setdefault(_words[0], []).append((_words, _rel))
_CONVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

_TOKEN = re.compile(r"[a-z]+|\d+|[.!?;:,]")
_SENTENCE_END = {".", "!", "?", ";"}


# ---------------------------------------------------------------- constraint types
@dataclass(frozen=True)
class ObjectSpec:
    """A described object; None = not stated (matches anything)."""
    shape: str | None = None
    color: str | None = None
    size: str | None = None
    cell: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {"shape": self.shape, "color": self.color, "size": self.size, "cell": self.cell}

    def matches(self, obj: dict) -> bool:
        return all(v is None or obj.get(k) == v for k, v in self.as_dict().items())

    def is_empty(self) -> bool:
        return self.shape is None and self.color is None and self.size is None and self.cell is None

    def describe(self) -> str:
        words = " ".join(w for w in (self.size, self.color, self.shape or "shape") if w)
        return words + (f" in the {self.cell}" if self.cell else "")


@dataclass(frozen=True)
class CountSpec:
    """Exactly n objects matching `what` (an empty `what` counts all shapes)."""
    n: int
    what: ObjectSpec = ObjectSpec()

    def describe(self) -> str:
        noun = self.what.describe() if not self.what.is_empty() else "shape"
        return f"exactly {self.n} x {noun}"


@dataclass(frozen=True)
class RelationSpec:
    """Some object matching `a` is `relation` (shapes.RELATIONS) some other object matching `b`."""
    a: ObjectSpec
    relation: str
    b: ObjectSpec

    def describe(self) -> str:
        return f"{self.a.describe()} {self.relation} {self.b.describe()}"


@dataclass
class Constraints:
    """What a text states about an image."""
    objects: list[ObjectSpec] = field(default_factory=list)
    counts: list[CountSpec] = field(default_factory=list)
    relations: list[RelationSpec] = field(default_factory=list)
    backgrounds: list[str] = field(default_factory=list)  # normally zero or one

    @property
    def background(self) -> str | None:
        return self.backgrounds[0] if self.backgrounds else None

    def __len__(self) -> int:
        return len(self.objects) + len(self.counts) + len(self.relations) + len(self.backgrounds)

    def to_dict(self) -> dict[str, Any]:
        return {"objects": [o.as_dict() for o in self.objects],
                "counts": [{"n": c.n, **c.what.as_dict()} for c in self.counts],
                "relations": [{"a": r.a.as_dict(), "relation": r.relation, "b": r.b.as_dict()}
                              for r in self.relations],
                "background": self.background}


# ---------------------------------------------------------------- parsing
@dataclass
class _NP:
    """A noun phrase while its sentence is being read."""
    shape: str
    color: str | None = None
    size: str | None = None
    cell: str | None = None
    number: int | None = None
    definite: bool = False

    def spec(self) -> ObjectSpec:
        return ObjectSpec(self.shape, self.color, self.size, self.cell)


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def _match_relation(t: list[str], i: int) -> tuple[str, int] | None:
    for words, rel in _REL_BY_FIRST.get(t[i], ()):
        if tuple(t[i:i + len(words)]) == words:
            return rel, i + len(words)
    return None


def _match_cell(t: list[str], i: int) -> tuple[str, int] | None:
    """A cell phrase at t[i:], e.g. "in the upper left corner", "at the top middle", "top-left"."""
    if t[i] not in _CELL_FIRST:
        return None
    j, framed = i, False
    if j < len(t) and t[j] in _PREPS:
        j, framed = j + 1, True
    if j < len(t) and t[j] == "the":
        j, framed = j + 1, True
    if j >= len(t) or t[j] not in _POS_SINGLE:
        return None
    if j + 1 < len(t) and t[j] in _POS_ROW and t[j + 1] in _POS_COL and t[j + 1] != t[j]:
        rc, j = (_POS_ROW[t[j]], _POS_COL[t[j + 1]]), j + 2
    elif framed:
        rc, j = _POS_SINGLE[t[j]], j + 1
    else:
        return None  # a bare "left" or "top" is too ambiguous to be a place
    if j < len(t) and t[j] in _CELL_TAILS:
        j += 1
    if j < len(t) and t[j] == "of":  # "of the image" is still a place; "left of X" is a relation
        if j + 2 < len(t) and t[j + 1] == "the" and t[j + 2] in _FRAME_NOUNS:
            j += 3
        else:
            return None
    return shapes.CELLS[rc[0] * 3 + rc[1]], j


def _match_background(t: list[str], i: int) -> tuple[str | None, int] | None:
    """A background colour ("light blue background", "on white"), or a palette colour naming a
    background ("a blue background": consumed and ignored, it is not an object's colour)."""
    for words, name in _BG_BY_FIRST.get(t[i], ()):
        if tuple(t[i:i + len(words)]) == words:
            j = i + len(words)
            if j < len(t) and (t[j] in _SHAPE_WORDS or t[j] in _SIZE_WORDS):
                return None, j  # "a white circle": not the background, not a palette colour either
            return name, j + (1 if j < len(t) and t[j] in _BG_NOUNS else 0)
    if t[i] in _COLOR_WORDS and i + 1 < len(t) and t[i + 1] in _BG_NOUNS:
        return None, i + 2
    return None


def _match_shape(t: list[str], i: int) -> tuple[str, bool, int] | None:
    if t[i] == "plus":
        for words, (shape, plural) in _SHAPE_PHRASES.items():
            if tuple(t[i:i + len(words)]) == words:
                return shape, plural, i + len(words)
    if t[i] in _SHAPE_WORDS:
        shape, plural = _SHAPE_WORDS[t[i]]
        return shape, plural, i + 1
    return None


def _number(word: str) -> int | None:
    if word.isdigit():
        return int(word) if len(word) <= 2 and int(word) <= _MAX_NUMBER else None
    return _NUMBERS.get(word)


_KNOWN = (set(_REL_BY_FIRST) | _CELL_FIRST | set(_BG_BY_FIRST) | set(_SHAPE_WORDS) | {"plus"}
          | _GENERIC_NOUNS | set(_NUMBERS) | {"a", "an", "the"} | set(_SIZE_WORDS)
          | set(_COLOR_WORDS) | _BREAK_WORDS | {",", ":"})


def read_items(t: list[str]) -> list[tuple[str, Any, int, int]]:
    """One sentence's items in order, each with the token span [start, end) it was read from:
    ("np", _NP), ("cell", c), ("rel", r), ("bg", b), ("total", n), ("and", None), and what is read
    without an item of its own: ("color", c) for "a star in red" (the colour goes to that star)
    and ("bgword", None) for a background phrase that names no colour. The serving rewriter reads
    the spans to tell which words the grammar carried."""
    items: list[tuple[str, Any, int, int]] = []
    pend: dict[str, Any] = {}   # determiner / number / size / colour waiting for their noun
    last_np_end = -1            # token index just after the last noun phrase's head
    i = 0
    while i < len(t):
        w = t[i]
        if w not in _KNOWN and not w.isdigit():   # most words of a long junk text: skip cheaply
            i += 1
            continue
        rel = _match_relation(t, i)
        if rel:
            items.append(("rel", rel[0], i, rel[1]))
            pend, i = {}, rel[1]
            continue
        cell = _match_cell(t, i)
        if cell:
            items.append(("cell", cell[0], i, cell[1]))
            pend, i = {}, cell[1]
            continue
        if w == "in" and i + 1 < len(t) and t[i + 1] in _COLOR_WORDS and i == last_np_end:
            np_ = items[-1][1] if items and items[-1][0] == "np" else None
            if np_ is not None and not (i + 2 < len(t) and _match_shape(t, i + 2)):
                np_.color = _COLOR_WORDS[t[i + 1]]   # "a big star in red"
                items.append(("color", np_.color, i, i + 2))
                pend, i = {}, i + 2
                continue
        bg = _match_background(t, i)
        if bg:
            if bg[0]:
                items.append(("bg", bg[0], i, bg[1]))
                pend = {}
            else:
                items.append(("bgword", None, i, bg[1]))
            i = bg[1]
            continue
        shp = _match_shape(t, i)
        if shp:
            shape, plural, j = shp
            items.append(("np", _NP(shape, pend.get("color"), pend.get("size"), None,
                                    pend.get("number"), pend.get("det") == "the"), i, j))
            pend, i, last_np_end = {}, j, j
            continue
        if w in _GENERIC_NOUNS:
            if pend.get("number") is not None:
                items.append(("total", pend["number"], i, i + 1))   # "three shapes", "one flat shape"
            pend, i = {}, i + 1
            continue
        n = _number(w)
        if w in ("a", "an", "the"):
            pend = {"det": w}
        elif n is not None:
            pend["number"] = n
        elif w in _SIZE_WORDS:
            pend["size"] = _SIZE_WORDS[w]
        elif w in _COLOR_WORDS:
            pend["color"] = _COLOR_WORDS[w]
        elif w in _BREAK_WORDS or not w.isalpha():
            pend = {}
            if w == "and":
                items.append(("and", None, i, i + 1))   # "left of a square and above a triangle"
        # any other word ("flat", "bright") is skipped without breaking the phrase
        i += 1
    return items


def _read_sentence(t: list[str]) -> list[tuple[str, Any]]:
    """One sentence's items, in order: ("np", _NP), ("cell", c), ("rel", r), ("bg", b), ("total", n),
    ("and", None)."""
    return [(k, x) for k, x, _, _ in read_items(t) if k not in ("color", "bgword")]


def _attach(items: list[tuple[str, Any]], dropped: list[int] | None = None) -> list[tuple[_NP, str, _NP]]:
    """Give cells to noun phrases and pair relations' subjects and objects, within one sentence.

    One left-to-right pass (a sentence may be a megabyte of junk): a cell goes to the nearest
    earlier noun phrase without a cell, else waits for the next one; a relation takes the nearest
    earlier noun phrase as subject and waits for the next one as object. `dropped`, when given,
    receives the indices of the cells and relations no noun phrase took ("a circle above.").
    """
    cell_less: list[_NP] = []          # earlier noun phrases still without a cell, nearest last
    cells_waiting: deque[tuple[int, str]] = deque()  # cells that came before any cell-less noun phrase
    rels_waiting: list[tuple[int, _NP, str]] = []
    rels: list[tuple[_NP, str, _NP]] = []
    last_np: _NP | None = None
    for k, (kind, x) in enumerate(items):
        if kind == "np":
            if cells_waiting:
                x.cell = cells_waiting.popleft()[1]
            else:
                cell_less.append(x)
            rels.extend((subj, rel, x) for _, subj, rel in rels_waiting)
            rels_waiting = []
            last_np = x
        elif kind == "cell":
            if cell_less:
                cell_less.pop().cell = x
            else:
                cells_waiting.append((k, x))
        elif kind == "rel" and last_np is not None:
            subj = last_np
            # "a circle left of a square and above a triangle": a relation right after "and" whose
            # nearest noun phrase is the previous relation's object shares that relation's subject
            if k > 0 and items[k - 1][0] == "and" and rels and rels[-1][2] is subj:
                subj = rels[-1][0]
            rels_waiting.append((k, subj, x))
        elif kind == "rel" and dropped is not None:
            dropped.append(k)   # no noun phrase before it: no subject
    if dropped is not None:
        dropped.extend([k for k, _ in cells_waiting] + [k for k, _, _ in rels_waiting])
        dropped.sort()
    return rels


def dropped_items(t: list[str]) -> tuple[list[tuple[str, Any, int, int]], list[int]]:
    """(read_items(t), the indices of its cells and relations that no noun phrase takes): what
    the parser reads in one sentence and then loses (the rewriter names such phrases)."""
    items = read_items(t)
    core = [(k, i) for i, (k, _, _, _) in enumerate(items) if k not in ("color", "bgword")]
    dropped: list[int] = []
    _attach([(k, items[i][1]) for k, i in core], dropped)
    return items, [core[j][1] for j in dropped]


_ANTECEDENT_WINDOW = 64  # "the red circle" looks this many objects back (bounds adversarial input)


def parse_caption(text: str) -> Constraints:
    """Read a prompt or caption into the constraints it states. Never raises on a string."""
    if not isinstance(text, str):
        raise ValueError(f"text: expected a string, got {type(text).__name__}")
    toks = _tokens(text)
    objects: list[dict[str, Any]] = []          # mutable while reading: a later cell may fill in
    counts: list[tuple[int, _NP | None]] = []
    relations: list[tuple[Any, str, Any]] = []  # (object index | ObjectSpec, relation, ...)
    backgrounds: list[str] = []

    sent: list[str] = []
    for tok in toks + ["."]:
        if tok not in _SENTENCE_END:
            sent.append(tok)
            continue
        items = _read_sentence(sent)
        sent = []
        rels = _attach(items)
        ref: dict[int, Any] = {}   # id(_NP) -> object index or ObjectSpec (ambiguous reference)
        for kind, x in items:
            if kind == "bg" and x not in backgrounds:
                backgrounds.append(x)
            elif kind == "total":
                counts.append((x, None))
            elif kind == "np":
                if x.number is not None:
                    counts.append((x.number, x))
                    ref[id(x)] = x.spec()
                elif x.definite:
                    ref[id(x)] = _resolve(x, objects)
                else:
                    objects.append(x.spec().as_dict())
                    ref[id(x)] = len(objects) - 1
        for a, rel, b in rels:
            relations.append((ref[id(a)], rel, ref[id(b)]))

    def spec(r: Any) -> ObjectSpec:
        return ObjectSpec(**objects[r]) if isinstance(r, int) else r

    return Constraints(objects=[ObjectSpec(**o) for o in objects],
                       counts=[CountSpec(n, x.spec() if x else ObjectSpec()) for n, x in counts],
                       relations=[RelationSpec(spec(a), rel, spec(b)) for a, rel, b in relations],
                       backgrounds=backgrounds)


def _resolve(np_: _NP, objects: list[dict]) -> Any:
    """A definite noun phrase: the one earlier compatible object (its attributes are merged in),
    the description itself if several are compatible, or a new object if none is."""
    stated = {k: v for k, v in np_.spec().as_dict().items() if v is not None}
    found = []
    for idx in range(len(objects) - 1, max(-1, len(objects) - 1 - _ANTECEDENT_WINDOW), -1):
        o = objects[idx]
        if all(o[k] is None or o[k] == v for k, v in stated.items()):
            found.append(idx)
            if len(found) > 1:
                return np_.spec()
    if found:
        o = objects[found[0]]
        for k, v in stated.items():
            o[k] = v
        return found[0]
    objects.append(np_.spec().as_dict())
    return len(objects) - 1


# ---------------------------------------------------------------- facts and caption scores
def caption_facts(text: str) -> set[tuple]:
    """The facts a text states or directly implies, in shapes.facts(scene)'s vocabulary.

    Complete facts look exactly like shapes.facts's. Facts with an unstated part carry None there
    ("a red circle" -> ("object", None, "red", "circle")), and a count of a kind is
    ("count", n, size, color, shape, cell); those can be true or false (see fact_holds) but are
    never counted as recalled. Relations follow from stated cells (a red circle in the top left and
    a blue square at the bottom imply four rel facts) and from stated relations (with converses).
    """
    c = parse_caption(text)
    out: set[tuple] = {("background", b) for b in c.backgrounds}
    for cnt in c.counts:
        w = cnt.what
        out.add(("count", cnt.n) if w.is_empty() else ("count", cnt.n, w.size, w.color, w.shape, w.cell))
    placed = set()
    for o in c.objects:
        if o.is_empty():
            continue
        out.add(("object", o.size, o.color, o.shape))
        if o.cell and (o.color or o.shape):
            out.add(("at", o.color, o.shape, o.cell))
            if o.color and o.shape:
                placed.add((o.color, o.shape, o.cell))
    for r in c.relations:
        out.add(("rel", r.a.color, r.a.shape, r.relation, r.b.color, r.b.shape))
        out.add(("rel", r.b.color, r.b.shape, _CONVERSE[r.relation], r.a.color, r.a.shape))
    placed_list = sorted(placed)   # unique (colour, shape, cell): at most 8 x 5 x 9 of them
    for ca, sa, cell_a in placed_list:
        for cb, sb, cell_b in placed_list:
            for rel in shapes.relation({"cell": cell_a}, {"cell": cell_b}):
                out.add(("rel", ca, sa, rel, cb, sb))
    return out


def _fits(obj: dict, size=None, color=None, shape=None, cell=None) -> bool:
    return ((size is None or obj["size"] == size) and (color is None or obj["color"] == color)
            and (shape is None or obj["shape"] == shape) and (cell is None or obj["cell"] == cell))


def fact_holds(fact: tuple, scene: dict) -> bool:
    """Whether one fact (complete or with None parts) is true of a scene graph."""
    objs = scene.get("objects", [])
    kind = fact[0]
    if kind == "background":
        return scene.get("background") == fact[1]
    if kind == "count" and len(fact) == 2:
        return len(objs) == fact[1]
    if kind == "count":
        _, n, size, color, shape, cell = fact
        return sum(_fits(o, size, color, shape, cell) for o in objs) == n
    if kind == "object":
        return any(_fits(o, fact[1], fact[2], fact[3]) for o in objs)
    if kind == "at":
        return any(_fits(o, None, fact[1], fact[2], fact[3]) for o in objs)
    if kind == "rel":
        _, ca, sa, rel, cb, sb = fact
        return any(a is not b and _fits(a, None, ca, sa) and _fits(b, None, cb, sb)
                   and rel in shapes.relation(a, b) for a in objs for b in objs)
    raise ValueError(f"fact: unknown kind {kind!r}")


def score_caption(text: str, scene: dict) -> dict[str, Any]:
    """How truthful and complete a caption is for a scene.

    precision = stated facts that are true / stated facts (0.0 when nothing is stated);
    recall = true facts (shapes.facts) the caption states exactly / true facts;
    hallucination = number of stated facts that are false.
    """
    stated = caption_facts(text)
    truth = shapes.facts(scene)
    n_true_stated = sum(fact_holds(f, scene) for f in stated)
    return {"precision": n_true_stated / len(stated) if stated else 0.0,
            "recall": len(truth & stated) / len(truth) if truth else 1.0,
            "hallucination": len(stated) - n_true_stated,
            "n_stated": len(stated), "n_true": len(truth)}


# ---------------------------------------------------------------- scoring an image against a prompt
def _max_matching(candidates: list[list[int]]) -> list[int | None]:
    """Maximum bipartite matching (Kuhn's augmenting paths): candidates[i] = objects spec i may
    take; returns the object given to each spec (None if unmatched). Specs and objects are few."""
    owner: dict[int, int] = {}

    def take(i: int, seen: set[int]) -> bool:
        for j in candidates[i]:
            if j in seen:
                continue
            seen.add(j)
            if j not in owner or take(owner[j], seen):
                owner[j] = i
                return True
        return False

    for i in range(len(candidates)):
        take(i, set())
    got: list[int | None] = [None] * len(candidates)
    for j, i in owner.items():
        got[i] = j
    return got


def score_image(pred_scene: dict, constraints: Constraints | str, *, judge_validity: bool = True) -> dict[str, Any]:
    """Check every constraint against a scene graph (normally the oracle's parse of a generated
    image). Objects need distinct matching objects (two "red circle"s need two red circles); a
    count must be exact; a relation holds if some object matching `a` stands in it to some other
    object matching `b` (cells, as shapes.relation); a background must be the one named.

    A scene that is not a Shapes scene (shapes.invalid_reason: no object, more than four, two in
    one cell) meets no constraint and is never exact; `judge_validity=False` is for partial
    scenes that a text describes (the rewriter's checks), not for images.

    Returns {"results": [{"kind", "constraint", "ok"}], "n_constraints", "n_satisfied",
             "fraction" (1.0 when there is nothing to check), "exact" (all satisfied),
             "invalid" (the reason, or None)}.
    """
    if isinstance(constraints, str):
        constraints = parse_caption(constraints)
    if not isinstance(constraints, Constraints):
        raise ValueError(f"constraints: expected Constraints or str, got {type(constraints).__name__}")
    invalid = shapes.invalid_reason(pred_scene) if judge_validity else None
    objs = pred_scene.get("objects", [])
    results = []
    for b in constraints.backgrounds:
        results.append({"kind": "background", "constraint": b,
                        "ok": pred_scene.get("background") == b})
    got = _max_matching([[j for j, o in enumerate(objs) if spec.matches(o)]
                         for spec in constraints.objects])
    for spec, j in zip(constraints.objects, got):
        results.append({"kind": "object", "constraint": spec.describe(), "ok": j is not None})
    for cnt in constraints.counts:
        n = sum(cnt.what.matches(o) for o in objs)
        results.append({"kind": "count", "constraint": cnt.describe(), "ok": n == cnt.n})
    for r in constraints.relations:
        ok = any(a is not b and r.a.matches(a) and r.b.matches(b) and r.relation in shapes.relation(a, b)
                 for a in objs for b in objs)
        results.append({"kind": "relation", "constraint": r.describe(), "ok": ok})
    if invalid:  # not a Shapes scene: nothing it shows counts (noise must never score)
        for r in results:
            r["ok"] = False
    n_ok = sum(r["ok"] for r in results)
    return {"results": results, "n_constraints": len(results), "n_satisfied": n_ok,
            "fraction": n_ok / len(results) if results else float(not invalid),
            "exact": n_ok == len(results) and not invalid, "invalid": invalid}


def describe(constraints: Constraints) -> Iterable[str]:
    """Readable lines, one per constraint (for reports)."""
    for b in constraints.backgrounds:
        yield f"background {b}"
    for o in constraints.objects:
        yield f"object: {o.describe()}"
    for c in constraints.counts:
        yield f"count: {c.describe()}"
    for r in constraints.relations:
        yield f"relation: {r.describe()}"
