"""The Great Expectations gate on real ingested datasets (synth -> ingest, 48 images of 32 px),
and on copies corrupted in known ways: each corruption must be named, nothing else. The suites
are the saved JSON in model_code/data/expectations/; with html_report a GX Checkpoint builds the
Data Docs site beside the report."""
import html
import json
import os
import re
import shutil

import pandas as pd
import pytest

from model_code.data import ingest as ingest_mod
from model_code.data.ingest import ingest
from model_code.data.synth import synthesize
from model_code.data.validate import (DEFAULT_THRESHOLDS, SUITES_DIR, TABLES, ValidationFailed,
                                      load_suites, require_valid, resolve_thresholds,
                                      suite_parameter_names, suite_parameters, summary_text, validate)
from model_code.data.version import dir_md5

N, SIZE = 48, 32
SITE = os.path.join("gx", "uncommitted", "data_docs", "local_site")


def _text(path):
    """A Data Docs page as plain text (tags dropped, entities decoded)."""
    page = open(path, encoding="utf-8").read()
    page = re.sub(r"<(script|style).*?</\1>", " ", page, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page)))


def _expectations(suite):
    """What a suite checks (type, kwargs, description), without the ids a GX store adds."""
    return [(e["type"], e["kwargs"], e.get("description")) for e in suite["expectations"]]


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
    version = dir_md5(ds)
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
    text = summary_text(res)
    assert "passed" in text and f"{len(man)} records" in text

    # the Data Docs site (no hand-made page) in the GX project beside the report
    project = os.path.join(ds, "validation_gx")
    assert res["data_docs"] == report["data_docs"] == os.path.join(project, SITE, "index.html")
    assert os.path.isfile(res["data_docs"]) and not os.path.exists(os.path.join(ds, "validation.html"))
    index = open(res["data_docs"]).read()
    assert all(f"easel_{t}" in index for t in TABLES)
    pages = report["data_docs_pages"]
    assert sorted(pages) == sorted(TABLES) and all(os.path.isfile(p) for p in pages.values())
    assert "key is unique" in _text(pages["manifest"]) and "Status: Succeeded" in _text(pages["manifest"])

    # what ran is the saved JSON: the suites in the GX project are the files', and so is every result
    saved = load_suites()
    for table in TABLES:
        name = saved[table]["name"]
        assert report["suites"][table] == {"name": name, "version": saved[table]["meta"]["easel"]["version"],
                                           "file": f"model_code/data/expectations/{name}.json"}
        ran = json.load(open(os.path.join(project, "gx", "expectations", f"{name}.json")))
        assert _expectations(ran) == _expectations(saved[table])
        assert sorted(e["description"] for e in report["expectations"] if e["table"] == table) == sorted(
            e["description"] for e in saved[table]["expectations"])
    # the shard names are a suite parameter, filled in at validation time
    shard_exp = next(e for e in report["expectations"] if e["name"] == "expect_column_values_to_be_in_set(shard)")
    assert shard_exp["kwargs"]["value_set"] == [f"shards/shard-{i:05d}.tar" for i in range(3)]

    # the report and the GX project are not content: DVC's hash (our version id) is unchanged
    assert dir_md5(ds) == version
    # a second run keeps the first in the site's history
    validate(ds, html_report=True)
    runs = os.listdir(os.path.join(project, SITE, "validations", "easel_manifest", "__none__"))
    assert len(runs) == 2 and dir_md5(ds) == version


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
    artifact = str(tmp_path / "artifact.html")  # e.g. the KFP component's HTML artifact
    res = validate(ds, report_path=report, html_report=artifact)
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

    # Data Docs: the GX project is beside the report, not in the dataset
    assert res["data_docs"] == str(tmp_path / "elsewhere" / "report_gx" / SITE / "index.html")
    assert os.path.isfile(res["data_docs"]) and not os.path.exists(os.path.join(ds, "validation_gx"))
    page = _text(json.load(open(report))["data_docs_pages"]["manifest"])
    assert "Status: Failed" in page and "Unsuccessful Expectations 7" in page
    for f in res["failures"]:  # each failing expectation is listed (by its description)...
        assert f["description"] in page, f["name"]
    assert "shards/shard-00099.tar" in page and "not-a-hash" in page  # ... with what was seen
    # html_report=PATH: that path gets the failing table's Data Docs page too
    assert _text(artifact) == page


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


def test_suites_are_saved_gx_json_with_parameters(clean):
    import great_expectations as gx
    suites = load_suites()
    assert sorted(os.listdir(SUITES_DIR)) == sorted(f"easel_{t}.json" for t in TABLES)
    params = suite_parameters(json.load(open(os.path.join(clean, "dataset.json"))),
                              resolve_thresholds(None), ["shards/shard-00000.tar"])
    used = set()
    for table, suite in suites.items():
        # GX's own format: the file is what ExpectationSuite.to_json_dict() writes for it
        loaded = gx.ExpectationSuite(name=suite["name"], expectations=suite["expectations"],
                                     meta=suite["meta"], notes=suite["notes"])
        assert loaded.to_json_dict() == suite and suite["name"] == f"easel_{table}"
        easel = suite["meta"]["easel"]
        assert isinstance(easel["version"], int) and easel["note"] and easel["table"] == table
        # the parameters it uses are the ones its meta documents
        assert suite_parameter_names(suite) == set(easel["parameters"]), table
        used |= suite_parameter_names(suite)
    # validate() supplies exactly the parameters the suites use
    assert used == set(params)
    # every threshold reaches the suites as a parameter (nothing threshold-dependent is hard-coded)
    for k in ("max_quarantine_ratio", "max_duplicate_ratio", "min_rows", "min_caption_len",
              "max_heldout_fraction"):
        assert k in used and params[k] == DEFAULT_THRESHOLDS[k]
    assert params["caption_len_quantiles"] == {"quantiles": [0.05, 0.5, 0.95],
                                               "value_ranges": [[1, None], [3, 2000], [None, 10000]]}
    assert params["quarantine_reasons"] == list(ingest_mod.REASONS)
    # the manifest suite's columns are ingest's
    column_set = next(e["kwargs"]["column_set"] for e in suites["manifest"]["expectations"]
                      if e["type"] == "expect_table_columns_to_match_set")
    assert set(column_set) <= set(ingest_mod.MANIFEST_COLUMNS)
