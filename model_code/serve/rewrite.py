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
or "a photo of", are dropped). DALL-E 3's upsampling adds detail; it never changes what the user said.

    BuiltinRewriter().rewrite("two red crosses", seed=0).text
    -> "Two shapes on a gray background: a small red cross in the top left and a large red cross
        in the bottom right. The red cross is to the left of and above the red cross."

A chat endpoint (OpenAI-compatible, e.g. an LLM served by KServe) can do the rewriting instead
(serve.rewrite.url / EASEL_REWRITE_URL, .model / EASEL_REWRITE_MODEL); its answer is accepted only
if it still states every constraint of the prompt (`preserves`), otherwise the built-in rewrite
is used. Same prompt and seed -> same rewrite.
"""
from __future__ import annotations

import hashlib
import logging
import os
import random
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
_COLOUR_NOUNS = {"color", "colour", "hue", "shade", "tint"}
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


def unknown_words(prompt: str) -> list[str]:
    """Words the parser skipped where they may state an attribute or an object the world has no
    word for: inside a noun phrase ("a crimson circle" before the synonym existed, "a teal
    square", "a pink heart"), as an object's head ("a red circle and a heart"), or after "in" /
    "painted" ("a star in mauve"). The parser (made for scoring) skips them; a rewrite that filled
    the slot from the seed would silently replace what the user said (issue 11)."""
    t = cp._tokens(prompt)
    flagged: list[str] = []
    start, unk = None, []   # the open noun phrase: what started it, its unknown words
    prev_intro = False
    i = 0
    while i < len(t):
        kind, j = _word_class(t, i)
        if kind == "unknown":
            if prev_intro:
                flagged.append(t[i])
            elif start is None:
                start = "unknown"
            unk.append(t[i])
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
        prev_intro = t[i] in _ATTR_INTRO
        i = j
    if start == "det":
        flagged += unk
    return list(dict.fromkeys(flagged))


def keeps_words(prompt: str, scene: dict) -> bool:
    """Every colour, shape and size the prompt names appears among the scene's objects."""
    have = {k: {o[k] for o in scene["objects"]} for k in ("color", "shape", "size")}
    return all(v <= have[k] for k, v in stated_words(prompt).items())


def expand(prompt: str, seed: int | None = None, size: int = 64) -> dict | None:
    """One scene graph that satisfies every constraint of `prompt`, open details drawn from a
    seeded RNG; None when the prompt states nothing, nothing in the world satisfies it, or a
    word the parser could not bind cannot be placed without guessing."""
    c = parse_caption(prompt)
    if len(c) == 0 or len(set(c.backgrounds)) > 1:
        return None
    unbound = unbound_words(prompt, c)
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
        if score_image(scene, c)["exact"] and keeps_words(prompt, scene):
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
    c = parse_caption(original)
    scene = described_scene(rewritten)
    if c.relations and any(o["cell"] is None for o in scene["objects"]):
        return False   # relations are judged on cells; an object without one cannot be placed
    return bool(score_image(scene, c, judge_validity=False)["exact"])


# ---------------------------------------------------------------- rewriters
class BuiltinRewriter:
    """Shapes-world rewriting (module docstring); pure Python, ~1 ms."""

    def rewrite(self, prompt: str, seed: int | None = None) -> Rewrite:
        unknown = unknown_words(prompt)
        if unknown:
            return Rewrite(prompt, "unchanged", "kept as written: the Shapes world has no word for: "
                           + ", ".join(unknown))
        scene = expand(prompt, seed)
        if scene is None:
            loose = unbound_words(prompt)
            if loose:
                words = ", ".join(sorted(w for v in loose.values() for w in v))
                return Rewrite(prompt, "unchanged", f"kept as written: these words could not be "
                               f"placed without guessing: {words}")
            return Rewrite(prompt, "unchanged", "nothing the Shapes world can expand, or not satisfiable")
        return Rewrite(shapes.long_caption(scene), "builtin")


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
