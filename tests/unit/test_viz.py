"""Captioned grids (model_code/viz.py) draw whatever text a dataset or a captioner produces: a
sample grid once failed a training run with PIL's "raqm_layout() failed" on a caption."""
import pytest
from PIL import Image

from model_code.viz import image_grid, titled_rows

NASTY = ["", "\x00\x01\x02 nul and controls \x7f", "plain\x1c\x07", "side\x1eig star circle",
         "bidi \u202eoverride\u202c and \u200f marks \u2066isolate",
         "combining a\u0301\u0302\u0303\u0304\u0305\u0306" * 5, "emoji \U0001F600\U0001F9D1\u200d\U0001F680",
         "\ud800 lone surrogate", "arabic \u0645\u0631\u062d\u0628\u0627 hebrew \u05e9\u05dc\u05d5\u05dd",
         "private use \ue000\uf8ff", "x" * 100_000, "tab\tnewline\ncarriage\r", "\ufeffbom \ufffe\uffff"]


@pytest.mark.parametrize("layout", ["grid", "rows"])
def test_any_caption_draws(layout):
    imgs = [Image.new("RGB", (8, 8), (i * 20 % 255, 0, 0)) for i in range(len(NASTY))]
    out = image_grid(imgs, NASTY, cols=4, cell=32) if layout == "grid" else \
        titled_rows([(t, imgs[:2]) for t in NASTY], cell=16)
    assert out.mode == "RGB" and out.size[0] > 0
