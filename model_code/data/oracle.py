"""The Shapes-world oracle: parse an image back into a scene graph (the perfect judge).

Pipeline (one image, side S; canvases above WORK_MAX are box-filtered down first):
  1. background: median of the border ring, named by the nearest palette background B;
  2. colour model: objects never overlap, so every pixel is a mix  p = B + a (C_k - B)  of the
     background and one object colour; projecting p - B on each colour line gives a soft coverage
     a_k in [0, 1] and a residual;
  3. seeds: connected solid pixels (a >= 0.5) of one winning colour, split where two same-colour
     neighbours touch after blur (coverage valley, then erosion); faint blobs without any solid
     pixel (tiny blurred objects) become seeds too; partial edge pixels join the nearest seed;
  4. colour per object: the palette colour that explains the whole region best, with luma and chroma
     coverage fitted separately (JPEG halves chroma resolution and desaturates small objects);
  5. shape by analysis by synthesis: each of the 5 shapes is drawn with the generator's own
     shapes.shape_polygons at 4x supersampling (exactly like shapes.render), its centre and extent
     fitted to the observed soft mask's centroid and area (both survive blur), tried under a few
     blurs, and the candidate with the smallest squared error wins;
  6. blurred objects (no sharp candidate matched) are refined in image space (`_refine`): every shape
     at both of the world's sizes, on a quarter-pixel grid of centres, blurred with REFINE_SIGMAS,
     predicted as pixels (luma per pixel, chroma per JPEG 4:2:0 block) and compared with the image;
  7. is it a shape at all (`_refine`): an ellipse of free size and aspect competes with the shapes;
     a blurred object it explains clearly better, or that no shape explains, is a "blob" (a round,
     well-fitting one a circle), so that a generator's soft blobs are not read as stars or crosses;
  8. cell from the fitted centre, size class from the fitted extent (0.18 S vs 0.30 S).

It never raises on an image (blank in, zero objects out); only a value that is not an image at all
gets a ValueError naming `img`. Measured accuracy: docs/benchmarks.md, "Shapes-world oracle".
"""
from __future__ import annotations

import functools
import math
from collections import Counter
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from model_code.data import shapes

# ---------------------------------------------------------------- palette as arrays
_BG_NAMES = list(shapes.BACKGROUNDS)
_BG_RGB = np.array([shapes.BACKGROUNDS[n] for n in _BG_NAMES], np.float32)      # (4, 3)
_COLOR_NAMES = list(shapes.COLORS)
_COLOR_RGB = np.array([shapes.COLORS[n] for n in _COLOR_NAMES], np.float32)    # (8, 3)

# ---------------------------------------------------------------- tunables (fractions of S unless said)
WORK_MAX = 64           # larger canvases are box-filtered to 64 px first (128, 256: exact factors)
FG_ALPHA = 0.35         # foreground: a palette colour covers >= 35% of the pixel...
RESID_FRAC = 0.30       # ...and the pixel lies within 0.30 |C - B| (+ RESID_ABS) of its line
RESID_ABS = 12.0        # RGB units: JPEG / noise slack on the residual
MIN_MASS = 0.30         # components lighter than 0.30 x the smallest object's area are noise
SIZE_SPLIT = sum(shapes.SIZES.values()) / 2   # extent/S below 0.24 -> small, above -> large
BLUR_SIGMAS = (0.0, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5)  # blurs (working px) tried in the shape fit
CHROMA_WEIGHT = 0.25    # chroma vs luma weight in the shape-fit coverage (JPEG subsamples chroma)
MIN_CONTRAST = 0.5      # ...but the weighted contrast keeps at least half of the full contrast
COUPLING = 0.2          # how strongly luma and chroma coverage are tied in the colour decision
CLEAN_ERR = 0.02        # a sharp candidate this close (squared error / mask energy) is taken as is
FIT_ITERS = 6           # at most this many renders per candidate shape (clipped ones need them)
NOISE_FLOOR = 0.04      # coverage below this is background noise (and is cut from candidates too)
MIN_FIT = 0.45          # a blob whose best rendered shape overlaps it less (soft IoU) is dropped
MAX_COMPONENTS = 32     # bound the work on garbage images: keep the heaviest components
REFINE_SIGMAS = (0.5, 0.65, 0.8, 0.95, 1.1)  # blurs (working px) of the image-space refinement
REFINE_CHROMA = 0.7     # weight of a chroma sample vs a luma sample in the refinement's error
REFINE_REACH = 0.5      # the refinement searches centres this far (working px) from the moments'
CLUTTER_DIST = 48.0     # RGB distance from the background beyond which a pixel is "something"
CLUTTER_MARGIN = 0.25   # object boxes grow by this fraction of their extent (+1 px) for blurred edges
BLOB = "blob"           # the shape of an object that none of the world's shapes explains (below)
BLOB_MARGIN = 0.10      # an ellipse that leaves 10% less unexplained than the best shape wins
BLOB_MAX_RESIDUAL = 0.30   # a best shape leaving more than 30% unexplained is no shape
BLOB_AREAS = (0.8, 1.0, 1.25)   # ellipse areas tried, x the soft mask's mass (blur keeps it)
BLOB_MAX_ASPECT = 4.0    # the most elongated ellipse tried (a : b)
ROUND_ASPECT = 1.25     # a winning ellipse this round that fits this well is a circle
ROUND_MAX_RESIDUAL = 0.12


_TABLE_EXTENTS = np.geomspace(1.5, 1.25 * WORK_MAX, 24)   # working-pixel extents tabulated


@functools.lru_cache(maxsize=None)
def _moment_table(shape: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Area, and centroid offset from (cx, cy), of a rendered `shape` for each tabulated extent.

    Measured on the rasteriser itself, averaged over 2 subpixel placements: at a few pixels, PIL's
    filling makes a shape fatter than its polygon (a 6 px star covers 10% more than 0.28 e^2), so
    the first guess of (cx, cy, extent) from a mask's area and centroid must use the same numbers.
    Returns (areas, ox, oy), each (len(_TABLE_EXTENTS),), in pixels.
    """
    areas, oxs, oys = [], [], []
    for e in _TABLE_EXTENTS:
        n = int(math.ceil(e)) + 4
        gy, gx = np.mgrid[0:n, 0:n] + 0.5
        acc = np.zeros(3)
        for f in (0.0, 0.5):
            c = n / 2 + f
            r = _render_alpha(shape, c, c, e, n, n).astype(np.float64)
            ar = r.sum()
            acc += (ar, (r * gx).sum() / ar - c, (r * gy).sum() / ar - c)
        areas.append(acc[0] / 2)
        oxs.append(acc[1] / 2)
        oys.append(acc[2] / 2)
    # below ~3 px the rasterised area can dip as the extent grows; interpolation needs it monotonic
    areas = np.maximum.accumulate(np.array(areas)) + 1e-6 * np.arange(len(areas))
    return areas, np.array(oxs), np.array(oys)


def _first_guess(shape: str, area: float, mx: float, my: float) -> tuple[float, float, float]:
    """(cx, cy, extent) of the `shape` whose rendering has this area and centroid (unclipped)."""
    areas, oxs, oys = _moment_table(shape)
    if area > areas[-1]:  # beyond the table (a huge blob): area ~ extent^2
        e = float(_TABLE_EXTENTS[-1] * math.sqrt(area / areas[-1]))
    else:                 # area grows monotonically with extent
        e = float(np.interp(area, areas, _TABLE_EXTENTS))
    ox, oy = np.interp(e, _TABLE_EXTENTS, oxs), np.interp(e, _TABLE_EXTENTS, oys)
    return mx - float(ox), my - float(oy), e


def _draw(shape: str, cx: float, cy: float, e: float, w: int, h: int) -> Image.Image:
    """One shape drawn like shapes.render at k = SUPERSAMPLE, before the box filter: an "L" image
    (h*k, w*k); (cx, cy, e) in window pixels."""
    k = shapes.SUPERSAMPLE
    e = max(float(e), 0.25)
    im = Image.new("L", (w * k, h * k), 0)
    draw = ImageDraw.Draw(im)
    for poly in shapes.shape_polygons(shape, cx * k, cy * k, e * k):
        if shape == "circle":
            draw.ellipse(poly, fill=255)
        else:
            draw.polygon(poly, fill=255)
    return im


def _render_alpha_ss(shape: str, cx: float, cy: float, e: float, w: int, h: int) -> np.ndarray:
    """Coverage (h*k, w*k) in [0, 1] of one shape at the supersampled resolution."""
    return np.asarray(_draw(shape, cx, cy, e, w, h), np.float32) / 255.0


def _render_alpha(shape: str, cx: float, cy: float, e: float, w: int, h: int) -> np.ndarray:
    """Coverage (h, w) in [0, 1] of one shape drawn like shapes.render: polygons at 4x, box-filtered.

    (cx, cy, e) are in window pixels; drawing into a window whose origin is an integer pixel is the
    generator's drawing shifted by a multiple of the supersampling factor, so rasterisation agrees.
    """
    # PIL's BOX filter is the exact k x k mean (like shapes.render), up to uint8 rounding (< 0.003)
    return np.asarray(_draw(shape, cx, cy, e, w, h).resize((w, h), Image.BOX), np.float32) / 255.0


# the smallest object's area as a fraction of S^2: a small star (area ~0.28 e^2, e = 0.18 S)
_MIN_OBJ_AREA = 0.28 * min(shapes.SIZES.values()) ** 2


# ---------------------------------------------------------------- input handling
def _to_rgb_array(img: Any) -> np.ndarray:
    """Any image-like value -> float32 (H, W, 3) in 0..255. ValueError names `img` if it is not one."""
    if isinstance(img, Image.Image):
        return np.asarray(img.convert("RGB"), np.float32)
    if hasattr(img, "detach") and hasattr(img, "cpu"):  # a torch tensor, without importing torch
        img = img.detach().cpu().float().numpy()
    try:
        a = np.asarray(img)
    except Exception as exc:  # noqa: BLE001 - report what was wrong with the argument
        raise ValueError(f"img: cannot read as an array ({exc})") from None
    if a.size == 0 or np.iscomplexobj(a) or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise ValueError(f"img: expected a PIL image or a numeric array, got dtype {a.dtype}")
    if a.ndim == 4 and a.shape[0] == 1:  # a batch of one
        a = a[0]
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise ValueError(f"img: expected (H, W), (H, W, C) or (C, H, W), got shape {a.shape}")
    if a.shape[-1] not in (1, 3, 4) and a.shape[0] in (1, 3, 4):  # channels first
        a = np.moveaxis(a, 0, -1)
    if a.shape[-1] not in (1, 3, 4):
        raise ValueError(f"img: expected 1, 3 or 4 channels, got shape {a.shape}")
    a = a[..., :3] if a.shape[-1] >= 3 else np.repeat(a, 3, axis=-1)
    if a.dtype == bool:
        a = a.astype(np.float32) * 255.0
    elif np.issubdtype(a.dtype, np.floating):
        a = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        lo, hi = float(a.min()), float(a.max())
        if lo >= -1.0 - 1e-3 and hi <= 1.0 + 1e-3:  # model tensors: [-1, 1] if negative, else [0, 1]
            a = (a + 1.0) * 127.5 if lo < 0 else a * 255.0
    return np.clip(a.astype(np.float32), 0.0, 255.0)


def _square(a: np.ndarray) -> tuple[np.ndarray, float]:
    """Make the canvas square and at most WORK_MAX wide; return it and the factor back to input px."""
    h, w = a.shape[:2]
    side = max(h, w)
    work = min(side, WORK_MAX)
    if (h, w) == (work, work):
        return a, 1.0
    im = Image.fromarray(np.round(a).astype(np.uint8))
    # BOX is exact area averaging: a 256 render boxed to 64 is (up to rounding) a 64 render
    resample = Image.BOX if work < side and h == w else Image.BILINEAR
    im = im.resize((work, work), resample)
    return np.asarray(im, np.float32), side / work


# ---------------------------------------------------------------- parsing
def parse_image(img: Image.Image | np.ndarray) -> dict[str, Any]:
    """Parse an image into a scene graph {"size", "background", "objects": [...]}.

    Objects carry shape, color, size, cell, cx, cy, extent (input pixels) like shapes.sample_scene
    (shape is one of shapes.SHAPES, or BLOB for an object no world shape explains: it counts as an
    object, with its colour and cell, and matches no shape),
    plus `fit`: the soft IoU of the winning rendered shape with the observed mask (1.0 = perfect).
    `clutter` is the share of the canvas that is neither background nor inside an object (noise,
    smears); shapes.invalid_reason turns a large one into "not a Shapes scene".
    """
    a = _to_rgb_array(img)
    in_h, in_w = a.shape[:2]
    a, back = _square(a)
    S = a.shape[0]
    bg_obs = _border_median(a)
    bg_name = _BG_NAMES[int(np.argmin(((_BG_RGB - bg_obs) ** 2).sum(1)))]
    scene: dict[str, Any] = {"size": int(max(in_h, in_w)), "background": bg_name, "objects": []}
    if S < 4:
        return scene

    alpha, resid, ok = _colour_model(a, bg_obs)             # (S,S,8) each
    seeds = _components(alpha, resid, ok, S)                 # list of (S,S) masks, one per object
    if not seeds:
        return scene
    min_mass = MIN_MASS * _MIN_OBJ_AREA * S * S
    objs = []
    shape_alpha: dict[int, np.ndarray] = {}                 # colour -> (S,S) coverage for the fit
    regions = _regions(seeds, S)
    claimed = np.any(regions, axis=0)                        # pixels some object owns
    # JPEG 4:2:0 keeps chroma on 2x2 blocks of the input grid: 2 working px unless the canvas was
    # box-filtered by >= 2 (then one working pixel already spans a chroma block)
    chroma_block = 2 if back == 1.0 else 1
    boxes: list[tuple[float, float, float]] = []             # accepted objects, working px
    for region in regions:
        k = _decide_colour(a, bg_obs, region)
        if k not in shape_alpha:
            shape_alpha[k] = _shape_alpha(a, bg_obs, k)
        m = np.where(region, shape_alpha[k], 0.0)           # (S,S) soft mask of this object
        m[m < NOISE_FLOOR] = 0.0                             # background noise on the colour line
        if m.sum() < min_mass:
            continue
        fit = _fit_shape(m, S)
        if fit is None:
            continue
        shape, cx, cy, e, score, clean = fit
        if score < MIN_FIT:  # no shape explains it: a smear or noise, not an object
            continue
        if not clean:  # blurred: decide shape, size and centre by fitting the image itself
            shape, cx, cy, e = _refine(a, bg_obs, k, m, claimed & ~region, S, chroma_block)
        col = min(max(int(cx * 3 // S), 0), 2)
        row = min(max(int(cy * 3 // S), 0), 2)
        boxes.append((cx, cy, e))
        objs.append({"shape": shape, "color": _COLOR_NAMES[k],
                     "size": "small" if e / S < SIZE_SPLIT else "large",
                     "cell": shapes.CELLS[row * 3 + col],
                     "cx": round(float(cx * back), 3), "cy": round(float(cy * back), 3),
                     "extent": round(float(e * back), 3), "fit": round(float(score), 4)})
    # reading order, like the generator's cells
    objs.sort(key=lambda o: (shapes.CELLS.index(o["cell"]), o["cy"], o["cx"]))
    scene["objects"] = objs
    scene["clutter"] = _clutter(a, bg_obs, boxes)
    return scene


def _clutter(a: np.ndarray, bg: np.ndarray, boxes: list[tuple[float, float, float]]) -> float:
    """Share of the canvas that is neither background nor inside an accepted object's box: ~0 on
    a Shapes scene (even blurred or JPEG'd), large on noise or smears. shapes.invalid_reason reads
    it, so that an image the oracle cannot explain meets no constraint however many "objects" it
    found in it."""
    S = a.shape[0]
    off = np.sqrt(((a - bg) ** 2).sum(-1)) > CLUTTER_DIST                      # (S,S)
    yy, xx = np.mgrid[0:S, 0:S] + 0.5
    inside = np.zeros((S, S), bool)
    for cx, cy, e in boxes:
        r = e / 2 * (1 + CLUTTER_MARGIN) + 1.0
        inside |= (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
    return round(float((off & ~inside).mean()), 4)


def _border_median(a: np.ndarray) -> np.ndarray:
    ring = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]], axis=0)  # (4S, 3)
    return np.median(ring, axis=0).astype(np.float32)


def _colour_model(a: np.ndarray, bg: np.ndarray):
    """Soft coverage of every palette colour at every pixel, and how well each colour explains it.

    alpha[..., k] = projection of (p - B) on (C_k - B), clipped to [0, 1]; resid[..., k] = distance
    of p from that colour line; ok[..., k] = the residual is within the colour's tolerance.
    Returns alpha (S,S,8), resid (S,S,8), ok (S,S,8) bool.
    """
    v = a - bg                                              # (S,S,3)
    d = _COLOR_RGB - bg                                     # (8,3)
    dd = np.maximum((d * d).sum(1), 1.0)                    # (8,)
    vd = v @ d.T                                            # (S,S,8)
    alpha = np.clip(vd / dd, 0.0, 1.0)                      # (S,S,8)
    # |v - a d|^2 = |v|^2 - 2 a (v.d) + a^2 |d|^2, without an (S,S,8,3) temporary
    vv = (v * v).sum(-1, keepdims=True)                     # (S,S,1)
    resid = np.sqrt(np.maximum(vv - 2 * alpha * vd + alpha ** 2 * dd, 0.0))  # (S,S,8)
    ok = resid <= RESID_FRAC * np.sqrt(dd) + RESID_ABS
    return alpha, resid, ok


_EIGHT = np.ones((3, 3), bool)


def _components(alpha, resid, ok, S) -> list[np.ndarray]:
    """One seed mask (S, S) per object, heaviest first.

    Seeds are connected solid pixels (coverage >= 0.5) of one winning colour, with merged same-colour
    neighbours split. Small or blurred objects (a 32 px star after blur) may have too few solid
    pixels of one clear colour (per-pixel votes fail where blur and JPEG chroma subsampling mix an
    object with the background): a connected foreground region (some colour covers >= FG_ALPHA)
    that holds no seed becomes a seed itself. Colours are decided later, per object.
    """
    min_mass = MIN_MASS * _MIN_OBJ_AREA * S * S
    cand = np.where(ok, alpha, 0.0)                          # (S,S,8) explained coverage
    best = np.argmax(np.where(ok & (alpha > 0.25), -resid, -np.inf), axis=-1)  # (S,S)
    a_best = np.take_along_axis(cand, best[..., None], -1)[..., 0]
    solid = a_best >= 0.5
    out = []
    for k in np.unique(best[solid]):
        lab, n = ndimage.label(solid & (best == k), structure=_EIGHT)
        mass = ndimage.sum(alpha[..., k], lab, index=np.arange(1, n + 1))
        for i in np.nonzero(mass >= min_mass)[0]:
            for piece in _split(lab == i + 1, alpha[..., k], S):
                out.append((piece, float(alpha[..., k][piece].sum())))
    seeded = np.zeros(alpha.shape[:2], bool)
    for m, _ in out:
        seeded |= m
    strength = cand.max(axis=-1)
    lab, n = ndimage.label(strength >= FG_ALPHA, structure=_EIGHT)
    if n:
        idx = np.arange(1, n + 1)
        unseeded = ~ndimage.maximum(seeded, lab, index=idx).astype(bool)
        mass = ndimage.sum(strength, lab, index=idx)
        for i in np.nonzero(unseeded & (mass >= min_mass))[0]:
            out.append((lab == i + 1, float(mass[i])))
        # a blurred small object may have only a few pixels above FG_ALPHA: for a lighter blob the
        # mass counts its rim too (2 px, not reaching into another component or a seed)
        faint = np.nonzero(unseeded & (mass < min_mass) & (mass >= 0.25 * min_mass))[0]
        free = ~seeded & (strength >= NOISE_FLOOR)
        for i in faint[np.argsort(-mass[faint])][:MAX_COMPONENTS]:
            blob = lab == i + 1
            rim = ndimage.binary_dilation(blob, structure=_EIGHT, iterations=2) & free & ((lab == 0) | blob)
            rim_mass = float(strength[rim].sum())
            if rim_mass >= min_mass:
                out.append((blob, rim_mass))
    out.sort(key=lambda t: -t[1])
    return [m for m, _ in out[:MAX_COMPONENTS]]


def _split(mask: np.ndarray, ak: np.ndarray, S: int, depth: int = 0) -> list[np.ndarray]:
    """Split a component that holds same-colour objects in different cells (touching after blur).

    One object spans at most 0.30 S (+ blur), so only wider components are examined. Seeds come from
    raising the coverage threshold (the blurred gap between two objects is a valley in ak) and then
    from eroding the mask (a thin bridge breaks first); once the seeds fall into two or more cells,
    seeds are grouped by cell and every pixel goes to its nearest seed (a cheap watershed). Pieces
    are split again in case three objects were joined.
    """
    ys, xs = np.nonzero(mask)
    if depth > 3 or max(np.ptp(xs), np.ptp(ys)) + 1 <= 0.36 * S:
        return [mask]
    min_seed = 0.1 * _MIN_OBJ_AREA * S * S
    levels = [mask & (ak >= t) for t in (0.6, 0.7, 0.8, 0.9, 0.95)]
    er = levels[-1]
    for _ in range(max(2, int(0.08 * S))):
        er = ndimage.binary_erosion(er, structure=_EIGHT)
        levels.append(er)
    for seeds in levels:
        lab, n = ndimage.label(seeds, structure=_EIGHT)
        if n < 2:
            if n == 0:
                break
            continue
        idx = np.arange(1, n + 1)
        sizes = ndimage.sum(seeds, lab, index=idx)
        centres = ndimage.center_of_mass(seeds, lab, index=idx)
        by_cell: dict[int, int] = {}                    # seed label -> cell index (3 * row + col)
        for i, (size, (cy, cx)) in enumerate(zip(sizes, centres)):
            if size >= min_seed:
                by_cell[i + 1] = min(int(cy * 3 // S), 2) * 3 + min(int(cx * 3 // S), 2)
        cells = sorted(set(by_cell.values()))
        if len(cells) < 2:
            continue
        group = np.zeros(n + 1, np.int32)               # seed label -> 1 + position of its cell
        for i, c in by_cell.items():
            group[i] = cells.index(c) + 1
        seed_map = group[lab]
        _, (iy, ix) = ndimage.distance_transform_edt(seed_map == 0, return_indices=True)
        owner = seed_map[iy, ix]
        out = []
        for g in range(1, len(cells) + 1):
            out.extend(_split(mask & (owner == g), ak, S, depth + 1))
        return out
    return [mask]


# RGB -> (Y, Cb, Cr) without offsets (JPEG's matrix, ITU-R BT.601)
_YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
                np.float32)


def _shape_alpha(a: np.ndarray, bg: np.ndarray, k: int) -> np.ndarray:
    """Coverage of colour k for the shape fit: least squares in YCbCr with chroma down-weighted.

    JPEG keeps luma at full resolution but subsamples and quantises chroma harder, so for a colour
    whose contrast with the background is mostly chroma (yellow on white) the RGB projection is a
    blurred, blocky mask; leaning on luma keeps the outline. But where the luma contrast is tiny
    (yellow on gray: 6 grey levels) luma alone is mostly quantisation noise, so the chroma weight is
    raised until the weighted contrast is at least MIN_CONTRAST of the full one.
    """
    d = (_COLOR_RGB[k] - bg) @ _YCC.T                        # (3,) contrast in Y, Cb, Cr
    dy2, dc2 = float(d[0] ** 2), float(d[1] ** 2 + d[2] ** 2)
    wc2 = max(CHROMA_WEIGHT ** 2, (MIN_CONTRAST ** 2 * (dy2 + dc2) - dy2) / max(dc2, 1e-6))
    wc = math.sqrt(min(wc2, 1.0))
    w = np.array([1.0, wc, wc], np.float32)
    v = ((a - bg) @ _YCC.T) * w                              # (S,S,3)
    dw = d * w
    return np.clip(v @ dw / max(float(dw @ dw), 1.0), 0.0, 1.0)


def _regions(seeds: list[np.ndarray], S: int) -> list[np.ndarray]:
    """Each object's region: every pixel within reach of its seed and nearer to it than to any
    other seed (anti-aliased and blurred edges belong to the nearest object)."""
    ids = np.zeros(seeds[0].shape, np.int32)
    for j, m in enumerate(seeds):
        ids[m] = j + 1
    dist, (iy, ix) = ndimage.distance_transform_edt(ids == 0, return_indices=True)
    owner = np.where(dist <= max(3.5, 0.06 * S), ids[iy, ix], 0)
    return [owner == j + 1 for j in range(len(seeds))]


def _decide_colour(a: np.ndarray, bg: np.ndarray, region: np.ndarray) -> int:
    """The palette colour that best explains a region, robust to JPEG chroma loss.

    In YCbCr every pixel is fitted as B + aY*dY (luma) and aC*dC (chroma) with its own coverage
    for each, so a small object whose chroma JPEG has halved (a purple star turning greyish) is
    still purple rather than black; a penalty COUPLING*|dC|^2*(aY - aC)^2 keeps the two coverages
    together where the data allow, which is what separates "black" (no chroma to explain) from a
    colour whose chroma would have to vanish entirely. Returns the colour index.
    """
    v = (a[region] - bg) @ _YCC.T                            # (P,3) pixel minus background
    d = (_COLOR_RGB - bg) @ _YCC.T                           # (8,3)
    vy, vc = v[:, 0:1], v[:, 1:]                             # (P,1), (P,2)
    dy, dc = d[:, 0], d[:, 1:]                               # (8,), (8,2)
    c = np.maximum((dc * dc).sum(1), 1.0)                    # (8,) chroma contrast
    lam = COUPLING * c
    # normal equations of the 2x2 least squares, per colour: [[dy^2+lam, -lam], [-lam, c+lam]]
    a11, a12, a22 = dy * dy + lam, -lam, c + lam
    det = a11 * a22 - a12 * a12                              # (8,)
    by, bc = vy * dy, vc @ dc.T                              # (P,8) each
    ay = np.clip((a22 * by - a12 * bc) / det, 0.0, 1.0)
    ac = np.clip((a11 * bc - a12 * by) / det, 0.0, 1.0)
    err = ((vy - ay * dy) ** 2 + ((vc[:, None, :] - ac[..., None] * dc) ** 2).sum(-1)
           + lam * (ay - ac) ** 2)                           # (P,8)
    return int(np.argmin(err.sum(0)))


def _gauss_kernel(sigma: float) -> np.ndarray:
    r = np.arange(-math.ceil(4 * sigma), math.ceil(4 * sigma) + 1)
    g = np.exp(-r ** 2 / (2 * sigma ** 2))
    return g / g.sum()


_KERNELS = {s: _gauss_kernel(s) for s in BLUR_SIGMAS if s > 0}


def _blurs(r: np.ndarray) -> np.ndarray:
    """(len(BLUR_SIGMAS), h, w): r under every trial blur, zero outside the window (an object on
    its background). Separable 1-D correlations in C: no BLAS threads for these tiny arrays."""
    out = []
    for sigma in BLUR_SIGMAS:
        if sigma <= 0:
            out.append(r)
            continue
        k = _KERNELS[sigma]
        t = ndimage.correlate1d(r, k, axis=0, mode="constant")
        out.append(ndimage.correlate1d(t, k, axis=1, mode="constant"))
    return np.stack(out)


def _floor(x: np.ndarray) -> np.ndarray:
    """Candidates lose their faintest edge pixels exactly like the observed mask does."""
    return np.where(x < NOISE_FLOOR, 0.0, x)


def _fit_shape(m: np.ndarray, S: int):
    """Analysis by synthesis on one object's soft mask m (S, S).

    For each shape: start from the (cx, cy, extent) whose rendering has the mask's area and centroid,
    then fix-point iterate (render, compare centroid and area, shift and rescale): centroid and area
    are what blur preserves, and clipping at the canvas edge is handled because the rendering is
    clipped too. A clean image matches one candidate's sharp rendering almost exactly
    (error < CLEAN_ERR; wrong shapes are > 2.5x that even at 32 px) and is done; otherwise every
    candidate is tried under every blur in BLUR_SIGMAS and the smallest squared error wins.
    Returns (shape, cx, cy, extent, soft IoU, clean) in working pixels, or None; clean says the
    sharp rendering matched (no refinement needed).
    """
    ys, xs = np.nonzero(m)
    if len(xs) == 0:
        return None
    pad = int(math.ceil(0.08 * S + 4))
    x0, x1 = max(xs.min() - pad, 0), min(xs.max() + pad + 1, S)
    y0, y1 = max(ys.min() - pad, 0), min(ys.max() + pad + 1, S)
    win = m[y0:y1, x0:x1].astype(np.float64)
    h, w = win.shape
    A = win.sum()
    gy, gx = np.mgrid[0:h, 0:w] + 0.5
    mx, my = (win * gx).sum() / A, (win * gy).sum() / A   # centroid, window pixels
    norm = max(float((win * win).sum()), 1e-9)
    fits, sharp, means = [], [], []   # per shape: best sharp (shape, cx, cy, e, render), its error,
    for shape in shapes.SHAPES:       # and the mean of the iterates (the blur-invariant estimate)
        cx, cy, e = _first_guess(shape, A, mx, my)
        best, seen, best_it = (math.inf, None), [], 0
        for it in range(FIT_ITERS):
            r = _floor(_render_alpha(shape, cx, cy, e, w, h).astype(np.float64))
            err = float(((r - win) ** 2).sum()) / norm
            if err < best[0]:
                best, best_it = (err, (shape, cx, cy, e, r)), it
            ar = r.sum()
            # stop on an exact match, or when a clean match stopped improving; a blurred mask never
            # matches sharply, so there all iterates are taken for the mean below
            if ar <= 1e-6 or err < CLEAN_ERR / 4 or (best[0] < CLEAN_ERR and it - best_it >= 2):
                break
            # rasterised moments jump a little as edges cross subpixel centres, so the fixed point
            # wobbles by ~1% on small shapes: keep the best iterate (sharp images) and the mean of
            # the iterates after the first (blurred ones, whose sharp error says little)
            cx, cy = cx + mx - (r * gx).sum() / ar, cy + my - (r * gy).sum() / ar
            e = min(max(e * math.sqrt(A / ar), 0.5), 2.0 * S)
            seen.append((cx, cy, e))
        fits.append(best[1])
        sharp.append(best[0])
        means.append(tuple(np.mean(seen, axis=0)) if seen else best[1][1:4])
        if best[0] < CLEAN_ERR:  # a clean render matches its shape almost exactly, no other
            break
    i = int(np.argmin(sharp))
    if sharp[i] < CLEAN_ERR:
        best_r = fits[i][4]
    else:  # every candidate under every trial blur; each keeps the blur that fits it best
        best_err, i, best_r = math.inf, 0, None
        for n, (shape, *_) in enumerate(fits):
            cx, cy, e = means[n]
            r = _render_alpha(shape, cx, cy, e, w, h).astype(np.float64)
            rb = _floor(_blurs(r))                           # (n_sigma, h, w)
            errs = ((rb - win) ** 2).sum(axis=(1, 2))        # (n_sigma,)
            j = int(np.argmin(errs))
            if errs[j] < best_err:
                best_err, i, best_r = float(errs[j]), n, rb[j]
        fits[i] = (fits[i][0], *means[i], best_r)
    shape, cx, cy, e, _ = fits[i]
    iou = float(np.minimum(best_r, win).sum() / max(np.maximum(best_r, win).sum(), 1e-9))
    return shape, cx + x0, cy + y0, e, iou, bool(sharp[i] < CLEAN_ERR)


@functools.lru_cache(maxsize=256)
def _refine_mats(n: int, cb: int) -> tuple[np.ndarray, np.ndarray]:
    """Linear maps of one image axis of length n for the refinement, one per REFINE_SIGMAS:
    the blur (zero outside, like an object on its background), (len, n, n); and the chroma path,
    (len, n / cb, n): blur, then the mean of cb-pixel blocks, then (cb = 2) a decoder's "fancy"
    upsampling re-averaged over the block, which smooths the block samples by [1/8, 3/4, 1/8]."""
    idx = np.arange(n)
    blur = np.stack([np.exp(-(idx[None] - idx[:, None]) ** 2 / (2 * s * s)) for s in REFINE_SIGMAS])
    r = np.arange(-math.ceil(4 * max(REFINE_SIGMAS)), math.ceil(4 * max(REFINE_SIGMAS)) + 1)
    for i, s in enumerate(REFINE_SIGMAS):  # the same normalised kernel as _gauss_kernel
        blur[i] /= np.exp(-r ** 2 / (2 * s * s)).sum()
        blur[i][np.abs(idx[None] - idx[:, None]) > math.ceil(4 * s)] = 0.0
    m = n // cb
    block = np.zeros((m, n))
    for i in range(m):
        block[i, i * cb:(i + 1) * cb] = 1.0 / cb
    smooth = np.eye(m)
    if cb == 2 and m > 1:
        smooth = 0.75 * np.eye(m) + 0.125 * (np.eye(m, k=1) + np.eye(m, k=-1))
        smooth[0, 0] = smooth[-1, -1] = 0.875   # edge samples repeat
    return blur.astype(np.float32), (smooth @ block @ blur).astype(np.float32)


def _block_mean(x: np.ndarray, b: int) -> np.ndarray:
    """(..., h, w) -> (..., h/b, w/b) means of b x b blocks (b is 1 or 2, h and w multiples of b)."""
    if b == 1:
        return x
    return 0.25 * (x[..., 0::2, 0::2] + x[..., 1::2, 0::2] + x[..., 0::2, 1::2] + x[..., 1::2, 1::2])


def _refine(a: np.ndarray, bg: np.ndarray, k: int, m: np.ndarray, other: np.ndarray, S: int,
            cb: int) -> tuple[str, float, float, float]:
    """Shape, size and centre of a blurred object by fitting the image itself, not its mask.

    The soft mask of a blurred, JPEG-compressed small object (a 6 px star at 32 px) is a blob whose
    moments fit several shapes; the pixels still tell them apart if compared the way the image was
    made. Every shape at both of the world's sizes (shapes.SIZES x S) is rendered like
    shapes.render, placed at the mask's centroid (less that shape's own centroid offset) and
    shifted over a quarter-pixel grid within REFINE_REACH, blurred with each of REFINE_SIGMAS, and
    predicted as background + coverage x (colour - background). The error is measured in YCbCr:
    luma per pixel, chroma per cb x cb block (JPEG 4:2:0 keeps one chroma sample per 2x2 block;
    the model's chroma goes through the same block mean and a decoder's upsampling smoothing), with
    its own best blur for luma and for chroma (codecs soften chroma more). Pixels that belong to
    other objects are left out; then the blob test below. Returns (shape, cx, cy, extent) in working
    pixels, shape possibly BLOB.
    """
    h0, w0 = m.shape
    A = float(m.sum())
    gy, gx = np.mgrid[0:h0, 0:w0] + 0.5
    mx, my = float((m * gx).sum() / A), float((m * gy).sum() / A)
    M = int(math.ceil(REFINE_REACH + 0.25)) + 1          # render margin, px (> REFINE_REACH + 1/4)
    half = max(shapes.SIZES.values()) * S / 2 + REFINE_REACH + 3 * max(REFINE_SIGMAS) + 1
    x0 = max(int(math.floor(mx - half)), 0) // cb * cb
    y0 = max(int(math.floor(my - half)), 0) // cb * cb
    x1 = min(int(math.ceil(mx + half)), w0)
    y1 = min(int(math.ceil(my + half)), h0)
    x1 -= (x1 - x0) % cb
    y1 -= (y1 - y0) % cb
    h, w = y1 - y0, x1 - x0
    v = (a[y0:y1, x0:x1] - bg) @ _YCC.T                 # (h,w,3) observed minus background
    d = (_COLOR_RGB[k] - bg) @ _YCC.T                   # (3,) the colour's contrast
    wy = (~other[y0:y1, x0:x1]).astype(np.float32)      # luma weights: not another object's pixel
    vc = _block_mean(np.moveaxis(v[..., 1:], -1, 0), cb)  # (2, h/cb, w/cb)
    wc = (_block_mean(wy, cb) > 0.99).astype(np.float32) * (REFINE_CHROMA * cb * cb)
    q = shapes.SUPERSAMPLE                              # supersampled px per working px

    by, cy_ = _refine_mats(h, cb)
    bx, cx_ = _refine_mats(w, cb)
    bx, cx_ = bx.transpose(0, 2, 1)[:, None], cx_.transpose(0, 2, 1)[:, None]
    by, cy_ = by[:, None], cy_[:, None]

    # squared errors expand into data terms and dot products with the model: per pixel (luma) and
    # per block (chroma), |v - b d|^2 w = w |v|^2 - 2 b w (v . d) + b^2 w |d|^2 (constants dropped)
    ly, qy = (wy * v[..., 0] * d[0]).ravel(), (wy * d[0] ** 2).ravel()
    lc = (wc * (vc[0] * d[1] + vc[1] * d[2])).ravel()
    qc = (wc * (d[1] ** 2 + d[2] ** 2)).ravel()
    ns = len(REFINE_SIGMAS)

    def errors(R: np.ndarray, shifts: list[tuple[int, int]]) -> np.ndarray:
        """Error of the supersampled rendering R shifted by each (dx, dy) (supersampled px)."""
        box = np.cumsum(np.pad(R, ((1, 0), (1, 0))), axis=0)    # box sums of q x q blocks at
        box = np.cumsum(box, axis=1)                             # every offset, from the 2-D
        box = box[q:, q:] - box[:-q, q:] - box[q:, :-q] + box[:-q, :-q]   # running sum
        cov = np.stack([box[q * M - dy::q][:h, q * M - dx::q][:, :w] for dx, dy in shifts])
        cov = (cov * (1.0 / (q * q)))[None]                       # (1, N, h, w) coverage
        n = len(shifts)
        b = (by @ cov @ bx).reshape(ns * n, h * w)               # blurred, per sigma and shift
        ey = (b * b) @ qy - 2.0 * (b @ ly)
        bc = (cy_ @ cov @ cx_).reshape(ns * n, -1)               # the chroma path
        ec = (bc * bc) @ qc - 2.0 * (bc @ lc)
        return ey.reshape(ns, n).min(axis=0) + ec.reshape(ns, n).min(axis=0)

    reach = int(round(2 * REFINE_REACH))                # half-pixel steps, then quarter-pixel ones
    steps = [i * q // 2 for i in range(-reach, reach + 1)]
    coarse = [(dx, dy) for dy in steps for dx in steps]
    fine = [(dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dx or dy]
    found = []
    for shape in shapes.SHAPES:
        _, oxs, oys = _moment_table(shape)
        for frac in shapes.SIZES.values():
            e = frac * S
            cx = mx - float(np.interp(e, _TABLE_EXTENTS, oxs)) - x0   # window px
            cy = my - float(np.interp(e, _TABLE_EXTENTS, oys)) - y0
            cx, cy = round(cx * q) / q, round(cy * q) / q             # on the supersampled grid
            R = np.asarray(_render_alpha_ss(shape, cx + M, cy + M, e, w + 2 * M, h + 2 * M))
            errs = errors(R, coarse)
            j = int(np.argmin(errs))
            found.append((float(errs[j]), shape, e, cx, cy, R, coarse[j]))
    found.sort(key=lambda t: t[0])
    best = found[0]
    for err0, shape, e, cx, cy, R, (dx, dy) in found[:3]:   # quarter-pixel steps around the best
        errs = errors(R, [(dx + fx, dy + fy) for fx, fy in fine])
        j = int(np.argmin(errs))
        if errs[j] < min(err0, best[0]):
            best = (float(errs[j]), shape, e, cx, cy, R, (dx + fine[j][0], dy + fine[j][1]))
        elif err0 < best[0]:
            best = (err0, shape, e, cx, cy, R, (dx, dy))
    _, shape, e, cx, cy, _, (dx, dy) = best
    out = (shape, x0 + cx + dx / q, y0 + cy + dy / q, e)
    if BLOB_MARGIN is None:
        return out
    # Is it a shape at all? The fit above always names the best of the world's shapes, and a
    # generator's soft blob fits one of them a little better than the others (a round blob of
    # in-between size is a large star's twin once blurred): read that way, a drawer of blobs scores
    # about a quarter on "the asked shape". So a plain ellipse of free size, aspect and angle, placed
    # and blurred the same way, competes with the shapes. The object has no shape ("blob") when the
    # ellipse explains it clearly better (by BLOB_MARGIN of the error), unless that ellipse is a
    # round disc that fits well (a circle of whatever size), or when no shape explains it at all
    # (residual above BLOB_MAX_RESIDUAL). Calibrated on generators' outputs against blurred, JPEG'd
    # renders, which it costs little (32 px, blur 0.8 + JPEG: 97.4% -> 95.1% of scenes exact, small
    # low-contrast objects): docs/results.md, "Session 20". BLOB_MARGIN = None turns it off.
    C = max(float((wy * v[..., 0] ** 2).sum() + (wc * (vc ** 2).sum(0)).sum()), 1e-9)  # "nothing"
    xs_, ys_ = gx - mx, gy - my
    cov = np.array([[(m * xs_ * xs_).sum(), (m * xs_ * ys_).sum()],
                    [(m * xs_ * ys_).sum(), (m * ys_ * ys_).sum()]]) / A            # (2, 2), px^2
    lam, vec = np.linalg.eigh(cov)                                                # ascending
    theta = math.atan2(vec[1, 1], vec[0, 1])                                      # major axis
    r_obs = math.sqrt(max(lam[1], 1e-3) / max(lam[0], 1e-3))   # blur rounds it: try it stretched
    ecx, ecy = round((mx - x0) * q) / q, round((my - y0) * q) / q                  # window px
    ell = None
    for r in sorted({min(r_obs ** pw, BLOB_MAX_ASPECT) for pw in (1.0, 1.5, 2.0)}):
        for k_area in BLOB_AREAS:
            ab = k_area * A / math.pi                                             # a * b, px^2
            a_, b_ = math.sqrt(ab * r), math.sqrt(ab / r)
            errs = errors(_render_ellipse_ss(ecx + M, ecy + M, a_, b_, theta, w + 2 * M, h + 2 * M), coarse)
            j = int(np.argmin(errs))
            if ell is None or errs[j] < ell[0]:
                ell = (float(errs[j]), r, a_, b_, coarse[j])
    err_e, r, a_, b_, (dx, dy) = ell
    res_shape, res_ell = (best[0] + C) / C, (err_e + C) / C                       # share unexplained
    ellipse_wins = res_ell < (1.0 - BLOB_MARGIN) * res_shape
    if not ellipse_wins:
        return out if res_shape <= BLOB_MAX_RESIDUAL else (BLOB, *out[1:])
    e = 2.0 * math.sqrt(a_ * b_)                                                  # equal-area diameter
    round_ = r <= ROUND_ASPECT and res_ell <= ROUND_MAX_RESIDUAL
    return ("circle" if round_ else BLOB), x0 + ecx + dx / q, y0 + ecy + dy / q, e


def _render_ellipse_ss(cx: float, cy: float, a: float, b: float, theta: float, w: int, h: int) -> np.ndarray:
    """Coverage (h*k, w*k) of an ellipse (semi-axes a >= b, major axis at angle theta), drawn
    like _draw at the supersampled resolution; (cx, cy, a, b) in window pixels."""
    k = shapes.SUPERSAMPLE
    t = np.linspace(0.0, 2 * math.pi, 48, endpoint=False)
    ct, st = math.cos(theta), math.sin(theta)
    x = (cx + a * np.cos(t) * ct - b * np.sin(t) * st) * k
    y = (cy + a * np.cos(t) * st + b * np.sin(t) * ct) * k
    im = Image.new("L", (w * k, h * k), 0)
    ImageDraw.Draw(im).polygon(list(zip(x.tolist(), y.tolist())), fill=255)
    return np.asarray(im, np.float32) / 255.0


# ---------------------------------------------------------------- comparing scenes
def _key(o: dict) -> tuple:
    return (o["shape"], o["color"], o["size"], o["cell"])


def scene_match(pred: dict, truth: dict) -> bool:
    """Exact match: same background and the same multiset of (shape, color, size, cell)."""
    return (pred.get("background") == truth.get("background")
            and Counter(_key(o) for o in pred.get("objects", []))
            == Counter(_key(o) for o in truth.get("objects", [])))


_ATTRS = ("shape", "color", "size", "cell")


def match_objects(pred: dict, truth: dict) -> dict[str, Any]:
    """Pair predicted objects with true ones and say which attributes agree.

    Pairs maximise agreement (the cell counts most: it identifies an object); a pair that shares
    neither the cell nor two other attributes is no pair. Returns
    {"pairs": [{"truth": i, "pred": j, "shape": bool, "color": ..., "size": ..., "cell": ...,
                "exact": bool}],
     "missing": [truth indices], "extra": [pred indices],
     "object_accuracy": exact pairs / len(truth) (1.0 for two empty scenes)}.
    """
    P, T = pred.get("objects", []), truth.get("objects", [])
    pairs, used_p, used_t = [], set(), set()
    if P and T:
        w = np.array([[sum((4 if a == "cell" else 1) * (p.get(a) == t.get(a)) for a in _ATTRS)
                       for p in P] for t in T], float)
        ti, pj = linear_sum_assignment(-w)
        for i, j in zip(ti, pj):
            if w[i, j] < 2:  # neither the same cell nor two attributes in common: no pair
                continue
            row = {"truth": int(i), "pred": int(j)}
            row.update({a: P[j].get(a) == T[i].get(a) for a in _ATTRS})
            row["exact"] = all(row[a] for a in _ATTRS)
            pairs.append(row)
            used_t.add(int(i))
            used_p.add(int(j))
    return {"pairs": pairs,
            "missing": [i for i in range(len(T)) if i not in used_t],
            "extra": [j for j in range(len(P)) if j not in used_p],
            "object_accuracy": (sum(p["exact"] for p in pairs) / len(T)) if T else float(not P)}
