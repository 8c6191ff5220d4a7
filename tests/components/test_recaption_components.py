"""The recaption stage's components run through kfp.local (DALL-E 3): train_captioner on the
curated subset, recaption over the shard groups, and recaption_finalize gathering the fan-out's
caption sidecars (a List[Dataset] input) into a new dataset version."""
import math
import os

import pandas as pd
import pytest

from tests.components.tiny import STEPS, location

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning")]


def test_train_captioner(captioner, dataset):
    from model_code.train.parts import get_part
    s, model = captioner["Output"], location(captioner["model"])
    assert s["part"] == "captioner" and s["steps"] == STEPS and s["dataset"] == location(dataset)
    assert s["metrics"] and all(math.isfinite(v) for v in s["metrics"].values())
    assert os.path.getsize(os.path.join(model, "model.safetensors")) > 0
    get_part("captioner").load(model)  # what recaption does with it


def test_recaption_writes_filtered_sidecars(recaption_part, groups, dataset):
    s = recaption_part["Output"]
    shards = sorted(x for g in groups["Output"] for x in g)
    manifest = pd.read_parquet(os.path.join(location(dataset), "manifest.parquet"))
    assert sorted(s["shards_done"]) == shards and s["records"] == len(manifest)
    assert s["threads"] == 1  # a local fan-out's share of the cores (easel/lifecycle.local_threads)
    for kind in ("short", "long"):  # every record gets a verdict: pass, retry or fallback
        assert sum(s["verdicts"][kind].values()) == s["records"]
    sidecars = sorted(os.listdir(os.path.join(location(recaption_part["captions"]), "captions")))
    assert len(sidecars) == len(shards)
    rows = pd.concat(pd.read_parquet(os.path.join(location(recaption_part["captions"]), "captions", f))
                     for f in sidecars)
    assert len(rows) == s["records"] and set(rows["key"]) == set(manifest["key"])
    # a rejected caption falls back to the original one: nothing is left empty
    assert rows["short"].str.len().gt(0).all() and rows["long"].str.len().gt(0).all()
    fell_back = rows[rows["long_fallback"]]
    assert (fell_back["long"] == fell_back["original"]).all()


def test_recaption_finalize_seals_a_new_dataset_version(recaptioned, recaption_part, dataset):
    s = recaptioned["Output"]
    assert s["kind"] == "recaptioned" and s["parent"] == location(dataset)
    assert s["records"] == recaption_part["Output"]["records"]
    assert s["version"] and s["parent_version"]
    out = location(recaptioned["dataset"])
    assert os.path.exists(os.path.join(out, "dataset.json"))
    # the sidecars were gathered from the fan-out's part into the new dataset
    assert sorted(os.listdir(os.path.join(out, "captions"))) == \
        sorted(os.listdir(os.path.join(location(recaption_part["captions"]), "captions")))
