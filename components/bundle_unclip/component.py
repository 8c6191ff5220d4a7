from typing import Optional

from kfp import dsl
from kfp.dsl import Input, Model, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def bundle_unclip(tokenizer: Input[Model], clip: Input[Model], prior: Input[Model], decoder: Input[Model],
                  upsampler: Input[Model], preset: str, dataset: dict, name: str, workdir: str,
                  bundle: Output[Model], overrides: str = "", captioner: Optional[Input[Model]] = None) -> dict:
    """Assemble the unCLIP parts (tokenizer, CLIP, prior, decoder, upsampler, and the captioner
    when given: `rerank: captioner`) into one bundle (sampling settings: the preset's
    `sampling.unclip`)."""
    from easel.steps import bundle_step, input_location as at, output_location
    return bundle_step("unclip", {"tokenizer": at(tokenizer.path), "clip": at(clip.path), "prior": at(prior.path),
                                  "decoder": at(decoder.path), "upsampler": at(upsampler.path),
                                  "captioner": at(captioner.path) if captioner is not None else ""},
                       output_location(bundle.path, workdir, name), preset, dataset, overrides)
