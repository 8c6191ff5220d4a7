"""The Great Expectations gate on real ingested datasets (synth -> ingest, 48 images of 32 px),
and on copies corrupted in known ways: each corruption must be named, nothing else."""
import json
import os
import shutil

import pandas as pd
import pytest

from model_code.data.ingest import ingest
from model_code.data.synth import synthesize
from model_code.data.validate import (ValidationFailed, require_valid, resolve_thresholds,
                                      summary_text, validate)

N, SIZE = 48, 32


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("raw") / "shapes")
    synthesize(out, n=N, size=SIZE, seed=0, curated_fraction=0.25, workers=1)
    return out


@pytest.fixture(scope="module")
def clean(raw, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ds") / "shapes")
    ingest(raw, out, size=SIZE, shard_size=16, heldout_fraction=0.2, workers=1, progress=False)
    return out


def _copy(src, tmp_path, name="ds"):
    dst = str(tmp_path / name)
    shutil.copytree(src, dst)
    return dst


def test_clean_dataset_passes_with_report_and_statistics(clean, tmp_path):
    ds = _copy(clean, tmp_path)
    res = require_valid(ds, html_report=True)
    assert res["success"] and res["failed_expectations"] == []
    assert res["report"] == os.path.join(ds, "validation.json")
    report = json.load(open(res["report"]))
    assert report["success"] and len(report["expectations"]) > 40
    assert all(e["success"] for e in report["expectations"])
    st = res["statistics"]
    man = pd.read_parquet(os.path.join(ds, "manifest.parquet"))
    assert st["rows"] == len(man) == st["accepted"] and st["input"] == N
    assert st["splits"] == man["split"].value_counts().sort_index().to_dict()
    assert st["splits"]["heldout"] > 0 and st["curated"] == man["curated_caption"].notna().sum()
    assert st["caption_len"]["mean"] == pytest.approx(man["caption_len"].mean(), abs=1e-3)
    assert st["shards_found"] == st["shards"] == 3
    html = open(os.path.join(ds, "validation.html")).read()
    assert "Validation passed" in html and "expect_column_values_to_be_unique(key)" in html
    text = summary_text(res)
    assert "passed" in text and f"{len(man)} records" in text


def test_corrupted_manifest_names_each_failure(clean, tmp_path):
    ds = _copy(clean, tmp_path)
    path = os.path.join(ds, "manifest.parquet")
    m = pd.read_parquet(path)
    m.loc[1, "key"] = m.loc[0, "key"]            # duplicate key
    m.loc[2, "width"] = SIZE - 1                 # wrong resolution
    m.loc[3, "split"] = "validation"             # unknown split
    m.loc[4, "caption"] = ""                     # empty caption (and its length)
    m.loc[4, "caption_len"] = 0
    m.loc[5, "shard"] = "shards/shard-00099.tar"  # a shard that does not exist
    m.loc[6, "sha256"] = "not-a-hash"
    m.loc[7, "license"] = None                   # nullable: must NOT fail
    m.to_parquet(path, index=False)
    report = str(tmp_path / "elsewhere" / "report.json")
    res = validate(ds, report_path=report)
    assert not res["success"]
    assert sorted(res["failed_expectations"]) == sorted([
        "expect_column_values_to_be_unique(key)",
        "expect_column_values_to_be_between(width)",
        "expect_column_values_to_be_in_set(split)",
        "expect_column_values_to_be_between(caption_len)",
        "expect_column_value_lengths_to_be_between(caption)",
        "expect_column_values_to_be_in_set(shard)",
        "expect_column_values_to_match_regex(sha256)",
    ])
    assert res["report"] == report and os.path.exists(report)
    assert not os.path.exists(os.path.join(ds, "validation.json"))
    assert json.load(open(report))["failed_expectations"] == res["failed_expectations"]
    text = summary_text(res)
    assert "FAILED (7 expectations)" in text
    assert "shard-00099.tar" in text and "validation" in text  # what was seen, not just names
    # require_valid raises with the same summary (message lists the failed expectations)
    assert str(ValidationFailed(res)) == text


def test_schema_and_counts(clean, tmp_path):
    ds = _copy(clean, tmp_path)
    path = os.path.join(ds, "manifest.parquet")
    m = pd.read_parquet(path).drop(columns=["phash"])
    m["width"] = m["width"].astype(str)          # wrong type
    m = m.iloc[:-1]                              # a record lost after ingest
    m.to_parquet(path, index=False)
    meta = json.load(open(os.path.join(ds, "dataset.json")))
    meta["input"] += 2                           # counts that do not balance
    json.dump(meta, open(os.path.join(ds, "dataset.json"), "w"))
    # a duplicate whose kept record is not in the manifest; a quarantine reason nobody knows
    pd.DataFrame([{"source": "s", "key": "dup-1", "kept_key": "gone", "kind": "exact", "distance": 0}]
                 ).to_parquet(os.path.join(ds, "duplicates.parquet"), index=False)
    pd.DataFrame([{"source": "s", "key": "q-1", "reason": "cosmic rays", "detail": ""}]
                 ).to_parquet(os.path.join(ds, "quarantine.parquet"), index=False)
    res = validate(ds)
    failed = set(res["failed_expectations"])
    assert {"expect_table_columns_to_match_set",
            "expect_column_values_to_be_in_type_list(width)",
            "dataset.expect_column_pair_values_to_be_equal(manifest_rows, accepted)",
            "dataset.expect_column_pair_values_to_be_equal(duplicate_rows, duplicates)",
            "dataset.expect_column_values_to_be_between(unaccounted)",
            "duplicates.expect_column_values_to_be_null(kept_key_missing)",
            "quarantine.expect_column_values_to_be_in_set(reason)"} <= failed
    text = summary_text(res)
    assert "missing columns ['phash']" in text and '["gone"]' in text and "cosmic rays" in text


def test_quarantine_and_duplicate_ratios(raw, tmp_path):
    # a source with 6 corrupt images (quarantined) and 2 copies under new keys (duplicates)
    src = _copy(raw, tmp_path, "raw")
    lines = [json.loads(x) for x in open(os.path.join(src, "captions.jsonl"))]
    for rec in lines[:6]:
        with open(os.path.join(src, rec["file"]), "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n this is not an image")
    for i, rec in enumerate(lines[10:12]):
        copy = dict(rec, key=f"copy-{i}", file=f"images/copy-{i}.png")
        shutil.copyfile(os.path.join(src, rec["file"]), os.path.join(src, copy["file"]))
        lines.append(copy)
    with open(os.path.join(src, "captions.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in lines)
    ds = str(tmp_path / "ds")
    summary = ingest(src, ds, size=SIZE, shard_size=64, workers=1, progress=False)
    assert (summary["input"], summary["quarantined"], summary["duplicates"]) == (N + 2, 6, 2)

    # 6/50 = 12% quarantined > 10% by default; 2/50 = 4% duplicates > 3%
    with pytest.raises(ValidationFailed, match="quarantine_ratio") as ei:
        require_valid(ds, thresholds={"max_duplicate_ratio": 0.03})
    res = ei.value.result
    assert sorted(res["failed_expectations"]) == [
        "dataset.expect_column_values_to_be_between(duplicate_ratio)",
        "dataset.expect_column_values_to_be_between(quarantine_ratio)"]
    assert res["statistics"]["quarantine_ratio"] == pytest.approx(6 / 50)
    assert sum(res["statistics"]["reasons"].values()) == 6
    assert "observed 0.12" in str(ei.value) and "observed 0.04" in str(ei.value)
    res = validate(ds, thresholds={"max_quarantine_ratio": 0.15})
    assert res["success"], summary_text(res)


def test_bad_thresholds_and_inputs_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown validation threshold 'max_quarantine'"):
        resolve_thresholds({"max_quarantine": 0.1})
    with pytest.raises(ValueError, match="max_duplicate_ratio must be a number in \\[0, 1\\]"):
        resolve_thresholds({"max_duplicate_ratio": 2})
    with pytest.raises(ValueError, match="caption_len_mean"):
        resolve_thresholds({"caption_len_mean": [10, 5]})
    with pytest.raises(ValueError, match="not a quantile"):
        resolve_thresholds({"caption_len_quantiles": {"1.5": [0, 1]}})
    assert resolve_thresholds({"caption_len_quantiles": {0.5: [1, None]}})["caption_len_quantiles"] == {
        "0.5": [1, None]}
    with pytest.raises(ValueError, match="not an ingested dataset"):
        validate(str(tmp_path))
