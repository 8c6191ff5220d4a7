"""The data stage's components run through kfp.local: synth, ingest, validate, version and
shard_groups, on a 60-image Shapes source with one corrupt image and one duplicate added."""
import json
import os

import pandas as pd
import pytest

from components.require_valid.component import require_valid
from components.validate.component import validate
from tests.components.kfp_local import run
from tests.components.tiny import BROKEN_KEY, DUPLICATE_KEY, N_IMAGES, OV, PRESET, location, with_overrides

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning")]


def test_synth_writes_a_raw_shapes_source(synthesized, kfp_local):
    summary, raw = synthesized["Output"], synthesized["raw"]
    assert summary["n"] == N_IMAGES and summary["size"] == 32
    assert 0 < summary["curated"] < N_IMAGES  # the tiny preset's curated fraction
    assert raw.metadata["n"] == N_IMAGES
    # with a workdir the artifact holds a reference and the data lives in the work directory
    src = location(raw)
    assert src == os.path.join(kfp_local["workdir"], "raw")
    lines = [json.loads(x) for x in open(os.path.join(src, "captions.jsonl"))]
    assert len(lines) == N_IMAGES
    assert all(os.path.getsize(os.path.join(src, x["file"])) > 0 for x in lines)
    assert all(x["scene"]["objects"] for x in lines)  # every image keeps its scene graph


def test_ingest_shards_and_quarantines_with_balanced_counts(ingested, raw_source, kfp_local):
    s = ingested["Output"]
    assert s["input"] == N_IMAGES + 2
    assert s["input"] == s["accepted"] + s["quarantined"] + s["duplicates"]
    assert s["quarantined"] == 1 and s["duplicates"] >= 1
    assert ingested["dataset"].metadata["accepted"] == s["accepted"]
    ds = location(ingested["dataset"])
    assert ds == os.path.join(kfp_local["workdir"], "dataset")
    manifest = pd.read_parquet(os.path.join(ds, "manifest.parquet"))
    assert len(manifest) == s["accepted"] and manifest["key"].is_unique
    assert set(manifest["split"]) == {"train", "heldout"}
    assert (manifest["width"] == 32).all() and (manifest["height"] == 32).all()
    assert BROKEN_KEY not in set(manifest["key"])
    quarantine = pd.read_parquet(os.path.join(ds, "quarantine.parquet"))
    assert {"source", "reason"} <= set(quarantine.columns)
    bad = quarantine[quarantine["key"] == BROKEN_KEY]
    assert len(bad) == 1 and bad["reason"].iloc[0]  # quarantined with a reason, not dropped
    # the exact copy is a duplicate of the first image: only one of the two is kept
    first = json.loads(open(os.path.join(raw_source.path, "captions.jsonl")).readline())["key"]
    assert manifest["key"].isin([first, DUPLICATE_KEY]).sum() == 1
    assert len(os.listdir(os.path.join(ds, "shards"))) == 2


def test_validate_passes_and_writes_an_html_report(dataset):
    out = run(validate, dataset=dataset, preset=PRESET, overrides=OV)
    s = out["Output"]
    assert s["success"] is True and s["failed_expectations"] == []
    assert s["statistics"]["rows"] == s["statistics"]["accepted"]
    html = open(out["report"].path).read()
    assert html.lstrip().lower().startswith(("<!doctype html", "<html")) and "<table" in html
    # the JSON report sits in the dataset, which DVC leaves out of its hash
    assert json.load(open(s["report"]))["success"] is True


def test_a_failed_suite_publishes_its_report_then_stops_the_run(dataset, capsys):
    # the one quarantined record breaks a zero-tolerance quarantine threshold
    strict = with_overrides(data={"validate": {"max_quarantine_ratio": 0.0}})
    out = run(validate, dataset=dataset, preset=PRESET, overrides=strict)
    s = out["Output"]
    assert s["success"] is False and s["failed_expectations"]
    html = open(out["report"].path).read()  # the artifact the UI shows, written although the suite failed
    assert "<table" in html and "quarantine" in html.lower()
    with pytest.raises(RuntimeError, match="require-valid"):
        run(require_valid, validation=s)
    logs = capsys.readouterr().out
    assert "ValidationFailed" in logs and "quarantine" in logs
    passed = run(validate, dataset=dataset, preset=PRESET, overrides=OV)["Output"]
    assert run(require_valid, validation=passed)["Output"]["success"] is True


def test_version_names_the_dvc_content_hash(versioned, dataset):
    from model_code.data.version import dir_md5
    v = versioned["Output"]
    assert v["dataset"] == location(dataset)
    assert v["dvc_md5"] == dir_md5(location(dataset))  # what `dvc add` would record
    assert v["version"].startswith(f"dvc:{v['dvc_md5']}@git:")
    assert v["dvc_md5"].endswith(".dir")


def test_shard_groups_split_every_shard_once(groups, dataset):
    got = groups["Output"]
    shards = sorted(os.listdir(os.path.join(location(dataset), "shards")))
    assert len(got) == 2 and all(got)
    assert sorted(s for g in got for s in g) == shards
