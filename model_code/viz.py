"""Captioned image grids: README pictures, sample grids in reports and MLflow."""
from __future__ import annotations

import textwrap
import unicodedata
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont


def inline_images(markdown: str, base: str) -> str:
    """Markdown whose image links to files beside it (`![alt](grid.png)`, relative to `base`, a
    directory or URI) become data: URIs, so that the page shows them where it is viewed on its own
    (the Kubeflow UI's Markdown artifact view has no directory beside it). Links that are absolute,
    remote, outside `base` or unreadable stay as they are."""
    import base64
    import re

    from model_code import storage
    kinds = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}

    def one(m: re.Match) -> str:
        alt, target = m.group(1), m.group(2)
        ext = target[target.rfind("."):].lower() if "." in target else ""
        if ext not in kinds or "://" in target or target.startswith(("/", "data:")) or ".." in target.split("/"):
            return m.group(0)
        try:
            data = storage.read_bytes(storage.join(base, target))
        except (OSError, storage.StorageError):
            return m.group(0)
        return f"![{alt}](data:{kinds[ext]};base64,{base64.b64encode(data).decode()})"
    return re.sub(r"!\[([^\]]*)\]\(([^)\s]+)\)", one, markdown)


def _font(size: int = 11):
    """DejaVu Sans where the system has it (clear word spacing), else Pillow's built-in font."""
    for path in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "DejaVuSans.ttf"):
        try:
            # the basic layout: raqm's complex layout is not needed for captions, and fails
            # ("raqm_layout() failed") on some of the strings web alt-text and captioners produce
            return ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.BASIC)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def _printable(text: str) -> str:
    """Captions as drawable text: control, format and private-use characters become spaces."""
    return "".join(" " if unicodedata.category(ch)[0] == "C" else ch for ch in str(text))


def _draw_text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, font) -> None:
    try:
        draw.text(xy, _printable(text), fill=(20, 20, 20), font=font)
    except (RuntimeError, ValueError, OSError):   # a font that cannot shape it: its ASCII escape
        draw.text(xy, _printable(text).encode("ascii", "backslashreplace").decode(), fill=(20, 20, 20), font=font)


def image_grid(images: Sequence[Image.Image], captions: Sequence[str] | None = None, cols: int = 4,
               cell: int = 128, caption_lines: int = 4, chars_per_line: int | None = None) -> Image.Image:
    """Paste images (upscaled with nearest neighbour: pixels stay honest) into a grid, each with
    its caption wrapped underneath. Returns one RGB image."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    cols = max(1, min(cols, len(images)))
    rows = (len(images) + cols - 1) // cols
    font = _font()
    line_h = 12
    cap_h = caption_lines * line_h + 6 if captions else 0
    cpl = chars_per_line or max(8, cell // 6)
    grid = Image.new("RGB", (cols * (cell + 8) + 8, rows * (cell + cap_h + 8) + 8), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        x, y = 8 + c * (cell + 8), 8 + r * (cell + cap_h + 8)
        grid.paste(img.convert("RGB").resize((cell, cell), Image.NEAREST), (x, y))
        if captions:
            lines = textwrap.wrap(captions[i] or "", cpl)[:caption_lines]
            if len(textwrap.wrap(captions[i] or "", cpl)) > caption_lines:
                lines[-1] = lines[-1][: cpl - 3] + "..."
            for k, line in enumerate(lines):
                _draw_text(draw, (x, y + cell + 3 + k * line_h), line, font)
    return grid


def titled_rows(rows: Sequence[tuple[str, Sequence[Image.Image]]], cell: int = 96) -> Image.Image:
    """One row per prompt: the prompt above, its images below (evaluation sample grids)."""
    if not rows:
        raise ValueError("titled_rows needs at least one row")
    font = _font()
    ncol = max(len(imgs) for _, imgs in rows)
    title_h = 16
    w = 8 + ncol * (cell + 4)
    h = sum(title_h + cell + 8 for _ in rows) + 4
    out = Image.new("RGB", (max(w, 200), h), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    y = 4
    for title, imgs in rows:
        _draw_text(draw, (8, y + 2), textwrap.shorten(_printable(title), width=max(20, w // 6)), font)
        y += title_h
        for j, img in enumerate(imgs):
            out.paste(img.convert("RGB").resize((cell, cell), Image.NEAREST), (8 + j * (cell + 4), y))
        y += cell + 8
    return out
