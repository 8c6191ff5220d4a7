"""A pretrained vision-language captioner (BLIP, GIT, BLIP-2, Florence-2) as a recaption backend.

DALL-E 3 starts its captioner from a pretrained model; later recipes (SD3: CogVLM) recaption with
an off-the-shelf VLM. This backend loads such a model with transformers' AutoProcessor +
AutoModelForImageTextToText from a local directory, or from the object store (s3://, downloaded
with model_code.storage first). Nothing is ever fetched from a model hub: local_files_only=True.

The directory is what `model.save_pretrained(dir)` + `processor.save_pretrained(dir)` write.

Caption kinds: Florence-2 has task prompts for both (<CAPTION>, <MORE_DETAILED_CAPTION>); the
others caption unconditionally and the kind sets the token budget (short ~20 tokens, long up to 200).
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
from PIL import Image

from model_code.models.pretrained import default_device
from model_code.recaption.captioner import check_images, check_kind, local_dir

SUPPORTED = ("blip", "git", "blip-2", "florence2")
# Task prompts per model type and kind; None = unconditional captioning.
PROMPTS: dict[str, dict[str, str | None]] = {
    "florence2": {"short": "<CAPTION>", "long": "<MORE_DETAILED_CAPTION>"},
}
DEFAULT_MAX_NEW_TOKENS = {"short": 30, "long": 200}


class PretrainedCaptioner:
    """caption(images, kind, top_p, temperature, seed) with a transformers vision-language model."""

    def __init__(self, path_or_uri: str, device: str | None = None, max_new_tokens: dict | None = None,
                 prompts: dict[str, str | None] | None = None):
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        path = local_dir(path_or_uri, "pretrained captioner")
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(f"pretrained captioner: {path_or_uri} has no config.json "
                             f"(save the model there with save_pretrained)")
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        if config.model_type not in SUPPORTED:
            raise ValueError(f"pretrained captioner: model_type {config.model_type!r} at {path_or_uri} is not "
                             f"supported; use one of {SUPPORTED}")
        self.model_type = config.model_type
        self.device = default_device(device)
        self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True).to(self.device).eval()
        self.tokenizer = self.processor.tokenizer
        self.prompts = {**PROMPTS.get(self.model_type, {}), **(prompts or {})}
        self.max_new_tokens = {**DEFAULT_MAX_NEW_TOKENS, **(max_new_tokens or {})}
        self.name = f"pretrained:{path_or_uri}"

    def caption(self, images: Sequence[Image.Image], kind: str = "long", top_p: float = 0.9,
                temperature: float = 0.7, seed: int = 0) -> list[str]:
        check_kind(kind)
        images = [im.convert("RGB") for im in check_images(images)]
        if not images:
            return []
        prompt = self.prompts.get(kind)
        kwargs = {"images": images, "return_tensors": "pt"}
        if prompt is not None:
            kwargs["text"] = [prompt] * len(images)
        inputs = self.processor(**kwargs).to(self.device)
        if "pixel_values" in inputs:  # a half-precision checkpoint wants half-precision pixels
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        sample = temperature > 0  # DALL-E 3: nucleus sampling, top_p 0.9, temperature 0.7
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            out = self.model.generate(**inputs, do_sample=sample, top_p=top_p if sample else None,
                                      temperature=temperature if sample else None, top_k=None,
                                      max_new_tokens=int(self.max_new_tokens[kind]))
        prompt_ids = inputs.get("input_ids")
        if prompt_ids is not None and out.shape[1] >= prompt_ids.shape[1] \
                and torch.equal(out[:, :prompt_ids.shape[1]], prompt_ids):
            out = out[:, prompt_ids.shape[1]:]  # decoder-only models echo the prompt
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        return [t.strip() for t in texts]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
