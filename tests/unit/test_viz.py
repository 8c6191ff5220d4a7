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


def test_inline_images_embeds_only_files_beside_the_page(tmp_path):
    import base64
    from model_code.viz import inline_images
    Image.new("RGB", (4, 4), "red").save(tmp_path / "grid.png")
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (2, 2), "blue").save(tmp_path / "sub" / "g2.png")
    md = ("![a](grid.png) ![b](sub/g2.png) ![c](missing.png) ![d](../grid.png) ![e](/etc/x.png) "
          "![f](https://example.com/x.png) [not an image](grid.png)")
    out = inline_images(md, str(tmp_path))
    first = out.split("](data:image/png;base64,")[1].split(")")[0]
    assert base64.b64decode(first) == (tmp_path / "grid.png").read_bytes()
    assert out.count("data:image/png;base64,") == 2
    for kept in ("![c](missing.png)", "![d](../grid.png)", "![e](/etc/x.png)",
                 "![f](https://example.com/x.png)", "[not an image](grid.png)"):
        assert kept in out
