"""The local deploy step of the lifecycle: serve a registered model on 127.0.0.1, ask it for
images through the OpenAI-compatible route (over real HTTP), check every image's C2PA
manifest, and keep a captioned grid for the report."""
from __future__ import annotations

import base64
import io
import os
from typing import Sequence

import httpx
from PIL import Image

from model_code.serve.provenance import verify
from model_code.serve.server import start_in_thread
from model_code.viz import image_grid


def serve_and_generate(model_uri: str, out: str, prompts: Sequence[str], name: str = "easel",
                       n: int = 2, seed: int = 0, timeout: float = 600.0) -> dict:
    """Returns {url, prompts, images, provenance_valid, grid, revised_prompts}."""
    os.makedirs(out, exist_ok=True)
    srv = start_in_thread(model_uri, name=name, host="127.0.0.1", port=0)
    images, captions, revised, valid = [], [], [], 0
    try:
        with httpx.Client(base_url=srv.base_url, timeout=timeout) as http:
            for i, prompt in enumerate(prompts):
                r = http.post("/v1/images/generations", json={"model": name, "prompt": prompt, "n": n,
                                                               "response_format": "b64_json", "seed": seed + i})
                if r.status_code != 200:
                    raise RuntimeError(f"the served model answered {r.status_code} for {prompt!r}: {r.text[:300]}")
                for j, item in enumerate(r.json()["data"]):
                    if not item.get("b64_json"):  # withheld by the image safety filter
                        continue
                    png = base64.b64decode(item["b64_json"])
                    valid += bool(verify(png)["valid"])
                    with open(os.path.join(out, f"{i:02d}-{j}.png"), "wb") as f:
                        f.write(png)
                    images.append(Image.open(io.BytesIO(png)).convert("RGB"))
                    captions.append(prompt)
                    revised.append(item.get("revised_prompt"))
    finally:
        srv.stop()
    grid = os.path.join(out, "grid.png")
    if images:
        image_grid(images, captions, cols=n * 2, cell=128, caption_lines=3, chars_per_line=20).save(grid)
    return {"url": srv.base_url, "prompts": list(prompts), "images": len(images), "provenance_valid": valid,
            "grid": grid, "revised_prompts": revised}
