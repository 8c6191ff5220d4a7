"""Prompt rewriting (DALL-E 3, section 3.5 / appendix C): short user prompts are expanded into the
long, detailed captions the model was trained on, keeping everything the user asked for.

The built-in rewriter works in the Shapes world's vocabulary: it parses the prompt into
constraints (model_code.text.caption_parser), builds one scene that satisfies all of them, fills
in what the prompt left open (sizes, colours, shapes, cells, background) from a seeded random
draw, checks the scene against the constraints with the same judge evaluation uses, and writes
the scene as the canonical long caption (model_code.data.shapes.long_caption: count, sizes,
colours, shapes, positions, relations, background). It never drops a constraint: when no scene
can satisfy the prompt inside the world (five objects, two objects in one cell, a contradiction)
or the prompt states nothing the parser knows, the prompt is returned unchanged. Nor does it
contradict words it could not bind: a colour, size or shape word that the parser read but did not
attach to an object ("a circle coloured purple") goes to the one object whose attribute is open;
when that is ambiguous (several open objects) or impossible, the prompt is returned unchanged with
a note naming the words. Words the parser does not know at all are not guessed either: one inside a
noun phrase ("a teal square"), as an object's noun ("a heart") or after "in" ("a star in mauve")
keeps the prompt as written, with a note (`unknown_words`; words that state nothing, like "please"
or "a photo of", are dropped; other words left out of a rewrite are named in its note). Nor does it
rewrite what the caption grammar cannot state (`uncarried_phrases`): a negation ("not red", "without
a square", "isn't", "anything but"; a count of none, "no squares", is carried), a comparison
("bigger than", "the blue one is larger"), containment, overlap or depth ("inside", "overlapping",
"on top of", "behind"), or a place no cell phrase takes ("in a corner", "centered above"): the
prompt is kept as written and the note names the phrase as the user wrote it ("isn't", "4k").
Place synonyms that name a cell are mapped instead ("centered", "centred", "to the left of the
image"). Every rewrite is checked last with the parser: it states every fact the prompt states.
DALL-E 3's upsampling adds detail; it never changes what the user said.

    BuiltinRewriter().rewrite("two red crosses", seed=0).text
    -> "Two shapes on a gray background: a small red cross in the top left and a large red cross
        in the bottom right. The red cross is to the left of and above the red cross."

A chat endpoint (OpenAI-compatible, e.g. an LLM served by KServe) can do the rewriting instead
(serve.rewrite.url / EASEL_REWRITE_URL, .model / EASEL_REWRITE_MODEL); its answer is accepted only
if it still states every constraint of the prompt (`preserves`), otherwise the built-in rewrite
is used. Same prompt and seed -> same rewrite.
"""
from __future__ import annotations

import bisect
import hashlib
import logging
import os
import random
import re
from dataclasses import dataclass

from model_code.data import shapes
from model_code.text import caption_parser as cp
from model_code.text.caption_parser import Constraints, ObjectSpec, parse_caption, score_image

log = logging.getLogger(__name__)

_ATTRS = ("shape", "color", "size", "cell")
_TRIES = 20   # fresh random fills before giving up on a prompt


@dataclass(frozen=True)
class Rewrite:
    text: str
    source: str    # "builtin" | "chat" | "unchanged" (nothing to expand, or not satisfiable)
    note: str = ""


def _rng(prompt: str, seed: int | None) -> random.Random:
    """Deterministic across processes (Python's hash() is salted per process)."""
    h = hashlib.sha256(f"{seed if seed is not None else ''}\x00{prompt}".encode("utf-8", "surrogatepass"))
    return random.Random(int.from_bytes(h.digest()[:8], "big"))


# ---------------------------------------------------------------- constraints -> one scene
def _compatible(obj: dict, spec: ObjectSpec) -> bool:
    return all(v is None or obj[k] is None or obj[k] == v for k, v in spec.as_dict().items())


def _unify(obj: dict, spec: ObjectSpec) -> None:
    for k, v in spec.as_dict().items():
        if v is not None:
            obj[k] = v


def _bind(objs: list[dict], spec: ObjectSpec, exclude: list[int] = ()) -> list[int]:
    """The objects that may play `spec` in a relation: all that already match it, else one
    compatible object (its open attributes filled from spec), else a new object."""
    stated = {k: v for k, v in spec.as_dict().items() if v is not None}
    matching = [i for i, o in enumerate(objs) if all(o[k] == v for k, v in stated.items())]
    if matching and matching != list(exclude):
        return matching
    for i, o in enumerate(objs):
        if i not in exclude and _compatible(o, spec):
            _unify(o, spec)
            return [i]
    objs.append(spec.as_dict())
    return [len(objs) - 1]


def required_objects(c: Constraints) -> tuple[list[dict], list[tuple[list[int], str, list[int]]]] | None:
    """Partial objects the constraints need (None = open attribute) and relations between them
    as (candidate indices, relation, candidate indices); None if the world cannot hold them."""
    objs = [o.as_dict() for o in c.objects if not o.is_empty()]
    for cnt in c.counts:
        if cnt.what.is_empty() or cnt.n == 0:
            continue
        if cnt.what.cell is not None and cnt.n > 1:
            return None   # one object per cell
        have = sum(all(o[k] == v for k, v in cnt.what.as_dict().items() if v is not None) for o in objs)
        objs += [cnt.what.as_dict() for _ in range(max(0, cnt.n - have))]
    rels = []   # (objects that may be a, relation, objects that may be b): "the cyan star" may be either
    for r in c.relations:
        a = _bind(objs, r.a)
        b = _bind(objs, r.b, exclude=a if len(a) == 1 else ())
        rels.append((a, r.relation, b))
    totals = {cnt.n for cnt in c.counts if cnt.what.is_empty()}
    if len(totals) > 1:
        return None
    if totals:
        total = totals.pop()
        if total < len(objs) or total < 1:
            return None
        objs += [dict.fromkeys(_ATTRS) for _ in range(total - len(objs))]
    if not objs:   # only a background or a "no circles": one open object makes it a picture
        objs = [dict.fromkeys(_ATTRS)]
    if len(objs) > shapes.MAX_OBJECTS:
        return None
    return objs, rels


def _assign_cells(objs: list[dict], rels: list[tuple[list[int], str, list[int]]], rng: random.Random) -> bool:
    """Give every object without a cell a free cell so that each relation holds for some pair of
    its candidates (backtracking over at most 4 objects x 9 cells, in a seeded random order)."""
    taken = [o["cell"] for o in objs if o["cell"]]
    if len(set(taken)) != len(taken):
        return False
    free_idx = [i for i, o in enumerate(objs) if not o["cell"]]

    def rels_ok() -> bool:
        """False once some relation has no pair left that holds or may still hold."""
        for cand_a, rel, cand_b in rels:
            if not any(i != j and (not objs[i]["cell"] or not objs[j]["cell"]
                                   or rel in shapes.relation(objs[i], objs[j]))
                       for i in cand_a for j in cand_b):
                return False
        return True

    def place(k: int) -> bool:
        if k == len(free_idx):
            return rels_ok()
        cells = [c for c in shapes.CELLS if c not in {o["cell"] for o in objs if o["cell"]}]
        rng.shuffle(cells)
        for cell in cells:
            objs[free_idx[k]]["cell"] = cell
            if rels_ok() and place(k + 1):
                return True
        objs[free_idx[k]]["cell"] = None
        return False

    return rels_ok() and place(0)


def stated_words(prompt: str, c: Constraints | None = None) -> dict[str, set[str]]:
    """The colours, shapes and sizes a prompt's words name (canonical names; a colour that is only
    part of the background's name, like the blue of "light blue", is not counted)."""
    c = c if c is not None else parse_caption(prompt)
    toks = cp._tokens(prompt)
    colors = [cp._COLOR_WORDS[t] for t in toks if t in cp._COLOR_WORDS]
    for a, b in zip(toks, toks[1:]):
        if (a, b) == ("light", "blue") and "light blue" in c.backgrounds and "blue" in colors:
            colors.remove("blue")
    for bg in c.backgrounds:   # "white", "gray", "beige" name backgrounds, not shapes' colours
        if bg in colors and bg not in shapes.COLORS:
            colors.remove(bg)
    # a background's colour word right before a shape noun ("a white star") names a colour no
    # shape has in this world: kept as stated, so that no rewrite can silently recolour it
    bg_words = {"white": "white", "beige": "beige", "gray": "gray", "grey": "gray"}
    colors += [bg_words[a] for a, b in zip(toks, toks[1:]) if a in bg_words and b in cp._SHAPE_WORDS]
    out = {"color": set(colors),
           "shape": {cp._SHAPE_WORDS[t][0] for t in toks if t in cp._SHAPE_WORDS},
           "size": {cp._SIZE_WORDS[t] for t in toks if t in cp._SIZE_WORDS}}
    for cnt in c.counts:   # "no circles" names what must be absent
        if cnt.n == 0:
            for k in out:
                out[k].discard(getattr(cnt.what, k))
    return out


def unbound_words(prompt: str, c: Constraints | None = None) -> dict[str, set[str]]:
    """Stated colours/shapes/sizes that no parsed constraint carries ("a circle coloured purple":
    {"color": {"purple"}})."""
    c = c if c is not None else parse_caption(prompt)
    specs = ([*c.objects] + [n.what for n in c.counts] + [r.a for r in c.relations]
             + [r.b for r in c.relations])
    bound = {k: {getattr(s, k) for s in specs} - {None} for k in ("color", "shape", "size")}
    return {k: v - bound[k] for k, v in stated_words(prompt, c).items() if v - bound[k]}


def _place_unbound(objs: list[dict], unbound: dict[str, set[str]]) -> bool:
    """Give each unbound word to the one object whose attribute is open; False when that is
    ambiguous (several open objects) or impossible (no open object, or two words for one)."""
    for attr, words in unbound.items():
        open_objs = [o for o in objs if o[attr] is None]
        if len(words) != 1 or len(open_objs) != 1:
            return False
        if attr == "color" and next(iter(words)) not in shapes.COLORS:
            return False   # "a white star": no shape is white here
        open_objs[0][attr] = next(iter(words))
    return True


# ---------------------------------------------------------------- the user's words, as written
# A word as the user wrote it: "4k", "isn't", "top-left", "heart-shaped" (the parser's tokens split
# them: "4" + "k"); notes name these, never a fragment.
_USER_WORD = re.compile(r"[^\W_]+(?:['\u2019/\-][^\W_]+)*")


def _user_tokens(prompt: str) -> tuple[list[str], list[str]]:
    """The parser's tokens of `prompt` (caption_parser._tokens) and, for each, the whole word of
    the prompt it came from, as written (a punctuation token is itself)."""
    low, pos = [], []   # the lowered text, and each of its characters' index in the prompt
    for i, ch in enumerate(prompt):
        lc = ch.lower()
        low.append(lc)
        pos.extend([i] * len(lc))
    words = [(m.start(), m.end()) for m in _USER_WORD.finditer(prompt)]
    starts = [s for s, _ in words]
    toks, owner = [], []
    for m in cp._TOKEN.finditer("".join(low)):
        at = pos[m.start()]
        k = bisect.bisect_right(starts, at) - 1
        toks.append(m.group())
        owner.append(prompt[words[k][0]:words[k][1]] if k >= 0 and at < words[k][1] else m.group())
    if toks != cp._tokens(prompt):   # never expected; the parser's tokens are what counts
        toks = cp._tokens(prompt)
        owner = list(toks)
    return toks, owner


def _phrase(owner: list[str], i: int, j: int) -> str:
    """The user's words behind tokens i..j-1 ("isn't" once, though it is two tokens)."""
    out: list[str] = []
    for k in range(i, min(j, len(owner))):
        if k == i or owner[k] != owner[k - 1]:
            out.append(owner[k])
    return " ".join(out)


# ---------------------------------------------------------------- synonyms the grammar lacks
# "a red circle centered" / "a centred star" / "a circle, centrally placed": the world's centre
# cell. Mapped to the parser's "in the center" (a phrase it reads) instead of being dropped.
_CENTER_WORDS = {"centered", "centred", "centrally", "central"}
_PLACED = {"placed", "positioned", "located", "situated", "set", "sitting", "aligned"}
_CENTER = ["in", "the", "center"]
_BOUNDARY = {",", ".", "!", "?", ";", ":", "and", "with"}


def _np_head(t: list[str], j: int) -> int | None:
    """End of the shape noun a run of size/colour words from t[j] leads to, else None."""
    while j < len(t) and (t[j] in cp._SIZE_WORDS or t[j] in cp._COLOR_WORDS or t[j] in _PLACED):
        j += 1
    shp = cp._match_shape(t, j) if j < len(t) else None
    return shp[2] if shp else None


def _normalise(t: list[str], owner: list[str]) -> tuple[list[str], list[str]]:
    """Tokens with the place synonyms the parser lacks rewritten to phrases it reads, each new
    token owned by the user's word it stands for. Unmappable uses are left for _uncarried."""
    out_t: list[str] = []
    out_o: list[str] = []
    n, i = len(t), 0
    while i < n:
        w = t[i]
        rel = cp._match_relation(t, i)
        if rel and rel[0] in ("left of", "right of"):   # "to the left of the image": a cell
            k = rel[1] + (1 if rel[1] < n and t[rel[1]] == "the" else 0)
            if k < n and t[k] in cp._FRAME_NOUNS:
                side = "left" if rel[0] == "left of" else "right"
                out_t += ["on", "the", side]
                out_o += [owner[i]] * 3
                i = k + 1
                continue
        if w in ("left", "right") and i + 2 < n and t[i + 1] == "hand" and t[i + 2] in cp._CELL_TAILS:
            out_t.append(w)          # "the left-hand side" is the left side
            out_o.append(owner[i])
            i += 2
            continue
        if w in _CENTER_WORDS:
            k = i + 1
            while k < n and t[k] in _PLACED:
                k += 1
            prev = out_t[-1] if out_t else None
            head = _np_head(t, k)
            if head is not None and (prev is None or prev in ("a", "an", "the") or prev in _BOUNDARY
                                     or cp._number(prev) is not None or prev in cp._SIZE_WORDS
                                     or prev in cp._COLOR_WORDS):
                # before its noun: "a centered red circle" -> "a red circle in the center"
                out_t += t[k:head] + _CENTER
                out_o += owner[k:head] + [owner[i]] * 3
                i = head
                continue
            if w != "central":   # after its noun: "a red circle centered", "a star, centred"
                if k == n or t[k] in _BOUNDARY:
                    out_t += _CENTER
                    out_o += [owner[i]] * 3
                    i = k
                    continue
                if cp._match_cell(t, k):     # "centered at the top": the cell phrase says where
                    i = k
                    continue
                if t[k] in ("on", "in", "within", "against", "over"):
                    k2 = k + 1 + (1 if k + 1 < n and t[k + 1] in ("a", "an", "the") else 0)
                    bg = cp._match_background(t, k2) if k2 < n else None
                    if k2 < n and ((bg and bg[0]) or t[k2] in cp._FRAME_NOUNS or t[k2] in cp._BG_NOUNS):
                        out_t += _CENTER    # "centered on a white background", "centred in the image"
                        out_o += [owner[i]] * 3
                        i = k
                        continue
        out_t.append(w)
        out_o.append(owner[i])
        i += 1
    return out_t, out_o


# ---------------------------------------------------------------- what the grammar cannot carry
_NEGATION = {"not", "never", "without", "except", "excepting", "excluding", "exclude", "excluded",
             "nor", "neither", "none", "nothing", "non", "minus", "sans", "lacking", "lacks",
             "absent", "missing", "avoid", "omit", "omitting", "cannot", "isnt", "arent", "dont",
             "doesnt", "didnt", "cant", "wont", "wasnt", "werent", "shouldnt", "mustnt", "hasnt",
             "havent", "aint", "nowhere", "instead"}
_CONTRACTION = re.compile(r"n['\u2019]t$|^w/o(ut)?$", re.IGNORECASE)   # "isn't", "don't", "w/o"
_BUT_NEG = {"anything", "everything", "all", "nothing", "any", "anyone", "whatever"}
_NO_NOT_COUNT = {"other", "more", "less", "fewer", "else", "longer", "matter"}   # "no other shapes"
_COMPARATIVE = {
    "bigger", "biggest", "larger", "largest", "smaller", "smallest", "tinier", "tiniest",
    "littler", "littlest", "huger", "hugest", "taller", "tallest", "shorter", "shortest", "wider",
    "widest", "narrower", "narrowest", "longer", "longest", "thicker", "thinner", "fatter",
    "higher", "highest", "lowest", "greater", "greatest", "more", "most", "less", "least",
    "fewer", "fewest", "leftmost", "rightmost", "topmost", "uppermost", "bottommost",
    "lowermost", "same", "different", "differently", "identical", "equal", "equally", "matching",
    "similar", "twice", "double", "thrice", "triple", "brighter", "darker",
    "lighter", "compared", "relative"}
_OVERLAP = {
    "inside", "within", "into", "onto", "overlapping", "overlap", "overlaps", "overlapped",
    "overlaid", "overlay", "overlaying", "behind", "touching", "touch", "touches", "around",
    "surrounding", "surround", "surrounds", "surrounded", "encircling", "encircled", "enclosing",
    "enclose", "encloses", "enclosed", "containing", "contain", "contains", "contained",
    "inscribed", "intersecting", "intersect", "intersects", "covering", "cover", "covers",
    "covered", "hidden", "hiding", "stacked", "nested", "between", "among", "amid", "amidst",
    "across", "through", "inner", "outer", "interior", "layered", "occluding", "occluded"}
_PLACE_WORDS = (set(cp._POS_SINGLE) | cp._CELL_TAILS | _CENTER_WORDS | {
    "corners", "sides", "edges", "north", "south", "east", "west", "northwest", "northeast",
    "southwest", "southeast", "northern", "southern", "eastern", "western", "diagonal",
    "diagonally", "horizontally", "vertically", "row", "column", "quadrant"})
_ON_PREPS = {"in", "on", "at", "against"}


def _uncarried(t: list[str], owner: list[str]) -> list[tuple[str, str, int, int]]:
    """(phrase as the user wrote it, what it states) for each phrase the prompt states that the
    caption grammar cannot carry: a negation ("not red", "without a square", "isn't"), a
    comparison ("bigger than", "the blue one is larger"), containment, overlap or depth
    ("inside", "overlapping", "on top of", "behind"), or a place, relation or position word that
    no cell or relation phrase took ("in a corner", "centered above", "on the left of the image"
    before mapping). A rewrite would contradict or drop each of them. Each comes with its
    token span [start, end)."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    n = len(t)

    def add(s: int, e: int, what: str) -> None:
        out.setdefault((_phrase(owner, s, e), what), (s, e))
    consumed: set[int] = set()
    start = 0
    for end in [k for k, w in enumerate(t) if w in cp._SENTENCE_END] + [n]:
        found, dropped = cp.dropped_items(t[start:end])   # what the parser reads, and then loses
        items = [(kind, s + start, e + start) for kind, _, s, e in found]
        for kind, s, e in items:
            if kind != "np":
                consumed.update(range(s, e))
            if kind == "rel" and tuple(t[s:e]) in (("on", "top", "of"), ("atop",)):
                add(s, e, "overlap or depth")   # stacked, not just above
        for k in dropped:
            kind, s, e = items[k]
            add(s, e, "place" if kind == "cell" else "relation")
        start = end + 1
    for i, w in enumerate(t):
        nxt = t[i + 1] if i + 1 < n else None
        if w in _NEGATION or (w in ("t", "o", "out") and _CONTRACTION.search(owner[i])):
            j = i + 1 if w in ("instead",) and nxt == "of" else i
            add(i, j + 1, "negation")
        elif w == "no":
            j = i + 1   # a count of none ("no circles") is carried; "not red", "no other" are not
            while j < n and t[j] not in _NO_NOT_COUNT and (
                    t[j] in cp._SIZE_WORDS or t[j] in cp._COLOR_WORDS
                    or (t[j] not in cp._KNOWN and not t[j].isdigit())):
                j += 1
            if not (j < n and (cp._match_shape(t, j) or t[j] in cp._GENERIC_NOUNS)):
                add(i, i + 2 if nxt in _NO_NOT_COUNT else i + 1, "negation")
        elif w == "but" and ((i > 0 and t[i - 1] in _BUT_NEG) or nxt in ("not", "never")):
            s = i - 1 if i > 0 and t[i - 1] in _BUT_NEG else i
            add(s, i + 1 if s < i else i + 2, "negation")
        elif w in ("apart", "aside", "free", "save") and nxt in ("from", "of", "for"):
            add(i, i + 2, "negation")
        elif w == "than":
            s = i - 1 if i > 0 else i
            add(s, i + 1, "negation" if i > 0 and t[i - 1] in ("other", "rather") else "comparison")
        elif w in _COMPARATIVE:
            if nxt != "than":
                add(i, i + 1, "comparison")
        elif w == "as" and i + 2 < n and t[i + 2] == "as":
            add(i, i + 3, "comparison")   # "as big as"
        elif w in _OVERLAP:
            add(i, i + 1, "overlap or depth")
        elif w == "front":
            s = i - 1 if i > 0 and t[i - 1] == "in" else i
            add(s, i + 2 if nxt == "of" else i + 1, "overlap or depth")
        elif w in _PLACE_WORDS and i not in consumed:
            add(i, i + 1, "place")
        if w in _ON_PREPS and i not in consumed:   # "a circle in a square", "a dot on it"
            j = i + 1
            if j < n and (t[j] in ("a", "an", "the") or cp._number(t[j]) is not None):
                j += 1
            head = _np_head(t, j) if j < n else None
            if head is not None or (j < n and t[j] in ("it", "them", "each")):
                add(i, head or j + 1, "overlap or depth")
    # a phrase inside a longer one ("not" in "but not") is named once, by the longer (one sweep)
    inside, reach = set(), -1
    for s, e in sorted(set(out.values()), key=lambda se: (se[0], -se[1])):
        if reach >= e:
            inside.add((s, e))
        reach = max(reach, e)
    return sorted(((phrase, what, s, e) for (phrase, what), (s, e) in out.items() if (s, e) not in inside),
                  key=lambda x: (x[2], x[3]))


# Words the parser skips that state nothing the world draws: a rewrite may drop them. Anything
# else it skips inside a noun phrase may be a colour, size or shape it does not know.
_FILLER = (cp._FRAME_NOUNS | cp._CELL_TAILS | {
    "photo", "photograph", "drawing", "illustration", "painting", "sketch", "render", "rendering",
    "view", "composition", "graphic", "diagram", "pic", "artwork", "poster", "clipart",
    "flat", "plain", "solid", "filled", "simple", "lone", "bright", "vivid", "nice", "pretty",
    "cute", "perfect", "regular", "colored", "coloured", "shaped", "sized", "painted", "very",
    "really", "quite", "just", "only", "exactly", "also", "each", "other", "another", "same",
    "draw", "show", "make", "create", "generate", "paint", "give", "depict", "me", "us", "please",
    "i", "want", "would", "like", "can", "could", "you", "this", "that", "which", "one"})
_COLOUR_NOUNS = {"color", "colour", "hue", "shade", "tint", "size"}   # "of medium size": a head
_ATTR_INTRO = {"in", "painted", "coloured", "colored"}   # "a star in crimson", "painted teal"


def _word_class(t: list[str], i: int) -> tuple[str, int]:
    """(class, end) of the word at t[i]: det (article, number), mod (size, colour), head (a noun
    the world has: shape, "shape", background, colour noun), filler, unknown, or other."""
    w = t[i]
    shp = cp._match_shape(t, i)
    if shp:
        return "head", shp[2]
    if w in cp._GENERIC_NOUNS or w in cp._BG_NOUNS or w in _COLOUR_NOUNS:
        return "head", i + 1
    if w in ("a", "an", "the") or cp._number(w) is not None:
        return "det", i + 1
    if w in cp._SIZE_WORDS or w in cp._COLOR_WORDS or w in cp._BG_BY_FIRST:
        return "mod", i + 1
    if w in _FILLER:
        return "filler", i + 1
    if w.isalpha() and w not in cp._KNOWN:
        return "unknown", i + 1
    return "other", i + 1


_COPULA = {"is", "are", "be", "looks", "look", "appears", "appear", "seems", "seem"}
_PREP_NEXT = {"to", "of", "from", "by", "with", "a", "an", "the"}   # "is next to": not an attribute
_LIST_SEP = {",", "and", ":"}   # a word alone between these is a list item: "a circle, pink, big"


def _unknown_idx(t: list[str]) -> list[int]:
    """Indices of the tokens unknown_words flags (see there)."""
    flagged: list[int] = []
    start, unk = None, []   # the open noun phrase: what started it, its unknown words
    intro = None            # "in" / "painted" (attribute), "is" (predicate) just before
    i = 0
    while i < len(t):
        kind, j = _word_class(t, i)
        if kind == "unknown":
            alone = (i > 0 and t[i - 1] in _LIST_SEP and (i + 1 >= len(t) or t[i + 1] in _LIST_SEP
                                                          or t[i + 1] in cp._SENTENCE_END))
            if alone or intro == "attr" or (intro == "pred" and (i + 1 >= len(t) or t[i + 1] not in _PREP_NEXT)):
                flagged.append(i)   # "a star in mauve", "a circle that is pink", "a circle, pink"
            elif start is None:
                start = "unknown"
            unk.append(i)
        elif kind in ("det", "mod"):
            if start is None or (kind == "det" and start == "unknown"):
                start, unk = kind, ([] if kind == "det" else unk)
        elif kind == "head":
            flagged += unk
            start, unk = None, []
        elif kind == "other":
            if start == "det":
                flagged += unk   # an object phrase without a noun the world knows: "a heart"
            start, unk = None, []   # ("green next to": a colour word then a phrase it does not know)
        if t[i] in _ATTR_INTRO:
            intro = "attr"
        elif t[i] in _COPULA:
            intro = "pred"
        elif kind != "filler":   # "is very pink": the intro reaches past words that state nothing
            intro = None
        i = j
    if start == "det":
        flagged += unk
    return list(dict.fromkeys(flagged))


def _listing(items: list[str], most: int = 12) -> str:
    """Items for a note; a hostile prompt's thousands of them are counted, not listed."""
    return ", ".join(items[:most]) + (f" and {len(items) - most} more" if len(items) > most else "")


def _words_of(owner: list[str], idx: list[int]) -> list[str]:
    return list(dict.fromkeys(owner[i] for i in idx))


def _prepare(prompt: str) -> tuple[str, list[str], list[str]]:
    """The text the parser reads for `prompt` (place synonyms mapped: "centered" -> "in the
    center"), its tokens and, for each, the user's word it came from."""
    t, owner = _normalise(*_user_tokens(prompt))
    return " ".join(t), t, owner


def unknown_words(prompt: str) -> list[str]:
    """Words the parser skipped where they may state an attribute or an object the world has no
    word for: inside a noun phrase ("a crimson circle" before the synonym existed, "a teal
    square", "a pink heart"), as an object's head ("a red circle and a heart"), after "in" /
    "painted" ("a star in mauve") or as a predicate ("a circle that is pink"). The parser (made
    for scoring) skips them; a rewrite that filled the slot from the seed would silently replace
    what the user said (issue 11). Named as the user wrote them ("4k", not its "k")."""
    _, t, owner = _prepare(prompt)
    return _words_of(owner, _unknown_idx(t))


def uncarried_phrases(prompt: str) -> list[tuple[str, str]]:
    """(phrase as written, what it states) for each phrase of `prompt` that the Shapes world's
    caption grammar cannot carry: negation, comparison, containment / overlap / depth, or a place
    no cell phrase took (see _uncarried). A rewrite keeps such a prompt as written."""
    _, t, owner = _prepare(prompt)
    return [(phrase, what) for phrase, what, _, _ in _uncarried(t, owner)]


def keeps_words(prompt: str, scene: dict) -> bool:
    """Every colour, shape and size the prompt names appears among the scene's objects."""
    have = {k: {o[k] for o in scene["objects"]} for k in ("color", "shape", "size")}
    return all(v <= have[k] for k, v in stated_words(prompt).items())


def expand(prompt: str, seed: int | None = None, size: int = 64) -> dict | None:
    """One scene graph that satisfies every constraint of `prompt`, open details drawn from a
    seeded RNG; None when the prompt states nothing, nothing in the world satisfies it, or a
    word the parser could not bind cannot be placed without guessing. Place synonyms the parser
    lacks are read as the world's phrase ("centered" -> "in the center")."""
    text = _prepare(prompt)[0]
    c = parse_caption(text)
    if len(c) == 0 or len(set(c.backgrounds)) > 1:
        return None
    unbound = unbound_words(text, c)
    rng = _rng(prompt, seed)
    for _ in range(_TRIES):
        req = required_objects(c)
        if req is None:
            return None
        objs, rels = req
        if unbound and not _place_unbound(objs, unbound):
            return None
        for o in objs:   # open attributes: plausible, drawn from the seed
            o["shape"] = o["shape"] or rng.choice(shapes.SHAPES)
            o["color"] = o["color"] or rng.choice(list(shapes.COLORS))
            o["size"] = o["size"] or rng.choice(list(shapes.SIZES))
        if not _assign_cells(objs, rels, rng):
            return None   # cells and relations contradict each other
        background = c.background or rng.choice(list(shapes.BACKGROUNDS))
        scene = shapes.scene_from_objects(objs, size=size, background=background, seed=rng.randrange(2**31))
        # the judge of prompt following decides; a random fill can break a count ("two red
        # crosses" + an open colour drawn red), so draw again
        if score_image(scene, c)["exact"] and keeps_words(text, scene):
            return scene
    return None


# ---------------------------------------------------------------- checking a rewrite
def described_scene(text: str) -> dict:
    """The scene a (long) caption describes, as far as it states it: its objects (open
    attributes None) and background."""
    c = parse_caption(text)
    return {"background": c.background, "objects": [o.as_dict() for o in c.objects]}


def preserves(original: str, rewritten: str) -> bool:
    """Does `rewritten` still state every constraint of `original`? (Each object, exact count,
    relation and background of the original holds in the scene the rewrite describes.)"""
    c = parse_caption(_prepare(original)[0])   # "centered" is a place: the center
    scene = described_scene(rewritten)
    if c.relations and any(o["cell"] is None for o in scene["objects"]):
        return False   # relations are judged on cells; an object without one cannot be placed
    return bool(score_image(scene, c, judge_validity=False)["exact"])


# ---------------------------------------------------------------- rewriters
class BuiltinRewriter:
    """Shapes-world rewriting (module docstring); pure Python, ~1 ms."""

    def rewrite(self, prompt: str, seed: int | None = None) -> Rewrite:
        text, t, owner = _prepare(prompt)
        notes = []
        uncarried = _uncarried(t, owner)
        if uncarried:
            notes.append("the Shapes world's captions cannot state: "
                         + _listing([f"{phrase} ({what})" for phrase, what, _, _ in uncarried]))
        named = {k for _, _, s, e in uncarried for k in range(s, e)}
        unknown = _words_of(owner, [i for i in _unknown_idx(t) if i not in named])
        if unknown:
            notes.append("the Shapes world has no word for: " + _listing(unknown))
        if notes:
            return Rewrite(prompt, "unchanged", "kept as written: " + "; ".join(notes))
        scene = expand(prompt, seed)
        if scene is None:
            loose = unbound_words(text)
            if loose:
                words = ", ".join(sorted(w for v in loose.values() for w in v))
                return Rewrite(prompt, "unchanged", f"kept as written: these words could not be "
                               f"placed without guessing: {words}")
            return Rewrite(prompt, "unchanged", "nothing the Shapes world can expand, or not satisfiable")
        out = shapes.long_caption(scene)
        # the last word goes to the judge: every fact the parser reads from the prompt (as written,
        # and with its place synonyms mapped) must hold in the scene the rewrite describes
        if not (preserves(prompt, out) and preserves(text, out)
                and keeps_words(prompt, described_scene(out))):
            return Rewrite(prompt, "unchanged", "kept as written: the rewrite could not state every "
                           "fact of the prompt")
        dropped, i = [], 0
        while i < len(t):   # words the rewrite leaves out ("next" of "next to each other")
            kind, j = _word_class(t, i)
            dropped += [i] if kind == "unknown" else []
            i = j
        dropped = _words_of(owner, dropped)
        note = ("left out words the Shapes world cannot draw: " + _listing(dropped)) if dropped else ""
        return Rewrite(out, "builtin", note)


SYSTEM_PROMPT = (
    "You rewrite short image prompts into one detailed caption for a text-to-image model that "
    "draws flat shapes (circle, square, triangle, star, cross; colours red, orange, yellow, green, "
    "cyan, blue, purple, black; sizes small or large; positions on a 3x3 grid such as 'in the top "
    "left' or 'in the center'; backgrounds white, beige, gray or light blue). Keep every object, "
    "count, colour, size, position, relation and background the prompt states; choose the details "
    "it leaves open. Answer with the caption only, in this style:\n")


class ChatRewriter:
    """Rewriting by an OpenAI-compatible chat endpoint, checked; the built-in rewriter is the
    fallback for a failed call or an answer that loses a constraint."""

    def __init__(self, url: str, model: str, timeout_s: float = 10.0, api_key: str | None = None):
        import openai
        self.model = model
        self.client = openai.OpenAI(base_url=url, api_key=api_key or os.environ.get("EASEL_REWRITE_API_KEY") or "none",
                                    timeout=timeout_s, max_retries=0)
        self.fallback = BuiltinRewriter()
        example = shapes.sample_scene(random.Random(0), 64, n_objects=3)
        self.system = SYSTEM_PROMPT + shapes.long_caption(example)

    def rewrite(self, prompt: str, seed: int | None = None) -> Rewrite:
        if uncarried_phrases(prompt):
            # a negation, comparison or overlap no check can hold a chat answer to: kept as written
            return self.fallback.rewrite(prompt, seed)
        try:
            out = self.client.chat.completions.create(
                model=self.model, temperature=0, seed=seed, max_tokens=400,
                messages=[{"role": "system", "content": self.system}, {"role": "user", "content": prompt}])
            text = (out.choices[0].message.content or "").strip()
        except Exception as e:  # an unreachable or failing endpoint must not fail the request
            log.warning("rewrite endpoint failed (%s); using the built-in rewriter", e)
            r = self.fallback.rewrite(prompt, seed)
            return Rewrite(r.text, r.source, f"chat endpoint failed: {type(e).__name__}")
        if text and preserves(prompt, text):
            return Rewrite(text, "chat")
        r = self.fallback.rewrite(prompt, seed)
        return Rewrite(r.text, r.source, "the chat rewrite lost a constraint of the prompt")


def rewriter_from_config(cfg: dict):
    """The serve `rewrite:` section -> a rewriter (None when rewriting is disabled)."""
    rw = cfg["rewrite"]
    if not rw["enabled"]:
        return None
    if rw["url"]:
        return ChatRewriter(rw["url"], rw["model"], rw["timeout_s"])
    return BuiltinRewriter()
