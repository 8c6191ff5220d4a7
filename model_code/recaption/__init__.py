"""DALL-E 3's data stage: recaption a dataset with synthetic short and long captions.

    captioner.py   the Captioner protocol; CoCaCaptioner (models/coca.py), OracleCaptioner (Shapes)
    pretrained.py  PretrainedCaptioner: BLIP / GIT / BLIP-2 / Florence-2 from a local dir or s3://
    filters.py     length, repetition and CLIP-alignment filters with reasons and counts
    job.py         recaption(dataset, out, captioner, ...) -> caption sidecars; finalize(out, parent)
    report.py      caption_report(dataset_dir): quality against the Shapes truth, lengths, filters

Modules are imported on use (`from model_code.recaption.job import recaption`), so importing
this package loads no model library.
"""
