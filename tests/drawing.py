"""What a generator draws when it draws no world shape: soft ellipses in the world's colours, for
the tests of the judge's blob reading (oracle, metrics, gates)."""
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from model_code.data import shapes

SUPERSAMPLE = 4   # drawn at 4x and box-downsampled, anti-aliased like shapes.render


def soft_ellipses(size: int, background: str, ellipses, sigma: float = 1.0) -> Image.Image:
    """An RGB image of `size` px on a world background with one filled ellipse per
    (colour, cx, cy, a, b, angle) entry (centre and semi-axes in px, angle in radians), blurred
    by a Gaussian of `sigma` px."""
    k = SUPERSAMPLE
    im = Image.new("RGB", (size * k, size * k), shapes.BACKGROUNDS[background])
    draw = ImageDraw.Draw(im)
    for color, cx, cy, a, b, th in ellipses:
        pts = [((cx + a * math.cos(u) * math.cos(th) - b * math.sin(u) * math.sin(th)) * k,
                (cy + a * math.cos(u) * math.sin(th) + b * math.sin(u) * math.cos(th)) * k)
               for u in np.linspace(0, 2 * math.pi, 64, endpoint=False)]
        draw.polygon(pts, fill=shapes.COLORS[color])
    return im.resize((size, size), Image.BOX).filter(ImageFilter.GaussianBlur(sigma))
