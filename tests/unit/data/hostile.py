"""A corpus of hostile inputs for ingest: an image folder (KEY.png + KEY.txt captions, a nested
captions.jsonl) where every file is broken, odd or a trap in its own way.

`build_hostile_corpus(root)` writes it and returns what ingest must do with each key:
    {key: ("accepted", None) | ("quarantined", reason) | ("duplicate", "exact" | "near")}
plus the facts the conversion checks need (see CHECKS below). Keys sort in input order
(the folder reader sorts by path): the numbers in the names fix which copy is kept.
"""
from __future__ import annotations

import io
import json
import os
import struct
import zlib

import numpy as np
from PIL import Image

GOOD_CAPTION = "a test picture"


def smooth_image(seed: int, w: int, h: int) -> Image.Image:
    """A distinct smooth colour picture (random 6x6 colours, bicubic-upsampled): photo-like
    enough for JPEG and pHash, and no two seeds are near duplicates."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), "RGB")
    return small.resize((w, h), Image.BICUBIC)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_header_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A 60-byte PNG whose IHDR declares width x height (8-bit RGB) and whose IDAT is tiny:
    a decoder that trusted the header would allocate width*height*3 bytes."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + \
        chunk(b"IEND", b"")


def exif_rotated_jpeg() -> bytes:
    """Stored 80 wide x 40 high: left half red, right half blue, EXIF orientation 6 (the
    camera was turned: display = rotate 90 degrees clockwise). Displayed it is 40 x 80 with
    red on top and blue at the bottom."""
    a = np.zeros((40, 80, 3), dtype=np.uint8)
    a[:, :40] = (220, 20, 20)
    a[:, 40:] = (20, 20, 220)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(Image.fromarray(a, "RGB"), "JPEG", quality=95, exif=exif.tobytes())


def build_hostile_corpus(root: str) -> dict:
    """Write the corpus under root; return {"expect": {key: (outcome, reason)}, "checks": {...}}."""
    os.makedirs(root, exist_ok=True)
    expect: dict[str, tuple[str, str | None]] = {}

    def put(name: str, data: bytes, caption: str | bytes | None = GOOD_CAPTION) -> None:
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
        stem = os.path.splitext(name)[0]
        if caption is not None:
            with open(os.path.join(root, f"{stem}.txt"), "wb") as f:
                f.write(caption.encode("utf-8") if isinstance(caption, str) else caption)

    good = smooth_image(1, 96, 80)
    good_png = encode(good, "PNG")
    # ---- accepted, with conversion
    put("01_good_rgb.png", good_png)
    expect["01_good_rgb"] = ("accepted", None)

    cmyk = smooth_image(2, 72, 72).convert("CMYK")
    put("02_cmyk.jpg", encode(cmyk, "JPEG", quality=95))
    expect["02_cmyk"] = ("accepted", None)

    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)  # full 16-bit range
    put("03_gray16.png", encode(Image.fromarray(ramp), "PNG"))  # uint16 -> mode I;16
    expect["03_gray16"] = ("accepted", None)

    pal = Image.new("P", (64, 64), 0)
    pal.putpalette([0, 0, 0, 200, 30, 30] + [0] * (256 * 3 - 6))
    pal.paste(1, (16, 16, 48, 48))  # a red square; index 0 (the border) is transparent
    put("04_palette_transparent.png", encode(pal, "PNG", transparency=0))
    expect["04_palette_transparent"] = ("accepted", None)

    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[..., 2] = 255          # blue ...
    rgba[:, 32:, 3] = 255       # ... opaque on the right half, fully transparent on the left
    put("05_rgba.png", encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    expect["05_rgba"] = ("accepted", None)

    frames = [Image.new("RGB", (48, 48), c) for c in ((10, 200, 10), (200, 10, 10), (10, 10, 200))]
    put("06_animated.gif", encode(frames[0], "GIF", save_all=True, append_images=frames[1:],
                                  duration=100, loop=0))
    expect["06_animated"] = ("accepted", None)

    put("07_exif_rotated.jpg", exif_rotated_jpeg())
    expect["07_exif_rotated"] = ("accepted", None)

    la = Image.merge("LA", (smooth_image(8, 50, 50).convert("L"), Image.new("L", (50, 50), 128)))
    put("08_gray_alpha.png", encode(la, "PNG"))
    expect["08_gray_alpha"] = ("accepted", None)

    put("09_webp.webp", encode(smooth_image(9, 70, 60), "WEBP", quality=90))
    expect["09_webp"] = ("accepted", None)

    put("10_control_chars.png", encode(smooth_image(10, 64, 64), "PNG"),
        caption="a\x00 red\x1b[31m\u202e circle\r\n\tplease")
    expect["10_control_chars"] = ("quarantined", "control characters in caption")

    # ---- quarantined, each for its own reason
    put("20_truncated_png.png", good_png[: len(good_png) // 2])
    expect["20_truncated_png"] = ("quarantined", "truncated image")

    jpg = encode(smooth_image(21, 128, 128), "JPEG", quality=90)
    put("21_truncated_jpeg.jpg", jpg[: len(jpg) // 2])
    expect["21_truncated_jpeg"] = ("quarantined", "truncated image")

    put("22_zero_bytes.jpg", b"")
    expect["22_zero_bytes"] = ("quarantined", "empty file")

    put("23_text_named.jpg", b"this is not a picture, it is a text file\n" * 5)
    expect["23_text_named"] = ("quarantined", "not an image")

    put("24_bomb.png", png_header_bomb())
    expect["24_bomb"] = ("quarantined", "decompression bomb")

    put("25_wide_strip.png", encode(smooth_image(25, 1000, 10), "PNG"))
    expect["25_wide_strip"] = ("quarantined", "extreme aspect ratio")

    put("26_tiny.png", encode(smooth_image(26, 3, 3), "PNG"))
    expect["26_tiny"] = ("quarantined", "too small")

    put("27_empty_caption.png", encode(smooth_image(27, 64, 64), "PNG"), caption=" \n\t ")
    expect["27_empty_caption"] = ("quarantined", "empty caption")

    put("28_non_utf8_caption.png", encode(smooth_image(28, 64, 64), "PNG"), caption=b"caf\xe9 \xff\xfe")
    expect["28_non_utf8_caption"] = ("quarantined", "caption not UTF-8")

    put("29_huge_caption.png", encode(smooth_image(29, 64, 64), "PNG"), caption="word " * (1 << 20))
    expect["29_huge_caption"] = ("quarantined", "caption too long")

    put("30_no_caption.png", encode(smooth_image(30, 64, 64), "PNG"), caption=None)
    expect["30_no_caption"] = ("quarantined", "no caption")

    bad_crc = bytearray(encode(smooth_image(31, 64, 64), "PNG"))
    idat = bad_crc.index(b"IDAT")
    bad_crc[idat + 40] ^= 0xFF  # one flipped byte inside the compressed data
    put("31_bad_crc.png", bytes(bad_crc))
    expect["31_bad_crc"] = ("quarantined", "corrupt image")

    os.symlink("32_symlink_loop.png", os.path.join(root, "32_symlink_loop.png"))  # points at itself
    expect["32_symlink_loop"] = ("quarantined", "unreadable file")

    put("33_opted_out.png", encode(smooth_image(33, 64, 64), "PNG"))
    with open(os.path.join(root, "33_opted_out.json"), "w") as f:
        json.dump({"opt_out": True}, f)
    expect["33_opted_out"] = ("quarantined", "opted out")

    # ---- duplicates of 01_good_rgb: an identical file, and a JPEG re-encode of it
    put("40_duplicate.png", good_png)
    expect["40_duplicate"] = ("duplicate", "exact")
    put("41_near_duplicate.jpg", encode(good, "JPEG", quality=80))
    expect["41_near_duplicate"] = ("duplicate", "near")

    # ---- a nested captions.jsonl: a good line with extra fields, a missing file, broken JSON
    sub = os.path.join(root, "50_listed")
    os.makedirs(sub)
    with open(os.path.join(sub, "a.png"), "wb") as f:
        f.write(encode(smooth_image(50, 64, 64), "PNG"))
    with open(os.path.join(sub, "captions.jsonl"), "w", encoding="utf-8") as f:
        f.write(json.dumps({"file": "a.png", "caption": "listed", "license": "CC-BY-4.0",
                            "photographer": "Ada"}) + "\n")
        f.write(json.dumps({"file": "gone.png", "caption": "its file is missing"}) + "\n")
        f.write('{"file": "b.png", "caption": \n')
    expect["50_listed__a"] = ("accepted", None)
    expect["50_listed__gone"] = ("quarantined", "missing image")
    expect["50_listed__captions-line3"] = ("quarantined", "bad metadata")
    # ---- nothing outside the source is read: symlinks and paths that leave the root
    outside = os.path.join(os.path.dirname(os.path.abspath(root)), "outside-secret")
    os.makedirs(outside, exist_ok=True)
    with open(os.path.join(outside, "token.txt"), "w") as f:
        f.write("SECRET-TOKEN a red circle")
    with open(os.path.join(outside, "pic.png"), "wb") as f:
        f.write(encode(smooth_image(60, 64, 64), "PNG"))
    put("60_caption_link_out.png", encode(smooth_image(61, 64, 64), "PNG"), caption=None)
    os.symlink(os.path.join(outside, "token.txt"), os.path.join(root, "60_caption_link_out.txt"))
    expect["60_caption_link_out"] = ("quarantined", "outside the source")
    os.symlink(os.path.join(outside, "pic.png"), os.path.join(root, "61_image_link_out.png"))
    with open(os.path.join(root, "61_image_link_out.txt"), "w") as f:
        f.write(GOOD_CAPTION)
    expect["61_image_link_out"] = ("quarantined", "outside the source")
    os.symlink(outside, os.path.join(root, "62_dir_link_out"))   # a directory link: never walked
    put("63_link_inside.png", encode(smooth_image(63, 64, 64), "PNG"), caption=None)
    os.symlink("01_good_rgb.txt", os.path.join(root, "63_link_inside.txt"))  # inside the root: fine
    expect["63_link_inside"] = ("accepted", None)
    listed = os.path.join(root, "64_listed_out")
    os.makedirs(listed)
    with open(os.path.join(listed, "captions.jsonl"), "w", encoding="utf-8") as f:
        f.write(json.dumps({"key": "abs", "file": os.path.join(outside, "pic.png"), "caption": "x"}) + "\n")
        f.write(json.dumps({"key": "up", "file": "../../outside-secret/pic.png", "caption": "x"}) + "\n")
    expect["abs"] = ("quarantined", "outside the source")
    expect["up"] = ("quarantined", "outside the source")
    # ---- what looks like part of a record is accounted for: orphan captions, image-named dirs
    with open(os.path.join(root, "65_orphan.txt"), "w") as f:
        f.write("a caption whose image is missing")
    expect["65_orphan-txt"] = ("quarantined", "caption without an image")
    os.makedirs(os.path.join(root, "66_dir.png"))
    with open(os.path.join(root, "66_dir.txt"), "w") as f:
        f.write("a caption beside a directory named like an image")
    expect["66_dir-dir"] = ("quarantined", "not a file")
    expect["66_dir-txt"] = ("quarantined", "caption without an image")
    return {"expect": expect, "good_key": "01_good_rgb"}


if __name__ == "__main__":  # write one to look at: python tests/unit/hostile.py DIR
    import sys
    out = build_hostile_corpus(sys.argv[1])
    print(json.dumps(out["expect"], indent=1))
