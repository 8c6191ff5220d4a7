"""The recaption job: sidecars, verdicts, retries and fallback, resume, fan-out, lineage; the filters."""
import hashlib
import json
import logging
import math
import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from model_code import storage
from model_code.data import dataset as ds
from model_code.data.ingest import ingest
from model_code.models.coca import CoCa
from model_code.recaption import filters as F
from model_code.recaption.captioner import CoCaCaptioner
from model_code.recaption.job import finalize, gather_sidecars, recaption, sidecar_uri
from model_code.text.tokenizer import TextTokenizer

CLIP_CFG = {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "heads": 2,
            "text_width": 32, "text_layers": 1, "text_heads": 2, "embed_dim": 32}
# filters that any sample passes: the job's bookkeeping is then checked on its own
LENIENT = {"min_clip_cosine": -1.0, "long_tokens": [1, 300], "short_tokens": [1, 40], "max_repetition": 1.0,
           "batch_size": 4, "max_new_tokens": {"short": 8, "long": 16}}


def preset(**over):
    return {"recaption": {**LENIENT, **over}}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A real ingested Shapes dataset (3 shards: 10 + 10 + 4 records), its tokenizer and an
    untrained tiny CoCa (the job's mechanics do not depend on caption quality)."""
    root = tmp_path_factory.mktemp("recaption")
    data = str(root / "data")
    ingest("shapes://n=24,size=32,seed=0,curated_fraction=0.5", data, size=32, shard_size=10, workers=1,
           progress=False)
    man = ds.manifest(data)
    tok = TextTokenizer.train(list(man["caption"]) + [c for c in man["curated_caption"] if c], 400, 40)
    tok.save(str(root / "tok"))
    torch.manual_seed(0)
    cfg = CoCa.config_for({"max_text_tokens": 40, "width": 32, "layers": 1, "heads": 2, "clip": CLIP_CFG}, tok)
    CoCa.from_config(cfg).save_pretrained(str(root / "coca"))
    return {"root": root, "data": data, "tok": str(root / "tok"), "coca": str(root / "coca"), "manifest": man}


@pytest.fixture(scope="module")
def lenient_run(world):
    out = str(world["root"] / "lenient")
    hashes = {u: hashlib.sha256(storage.read_bytes(u)).hexdigest() for u in ds.shard_list(world["data"])}
    summary = recaption(world["data"], out, world["coca"], world["tok"], preset=preset(), mlflow=False,
                        progress=False)
    return {"out": out, "summary": summary, "shard_hashes": hashes}


def _sidecars(out):
    files = storage.ls(storage.join(out, "captions"), "shard-*.parquet")
    return {os.path.basename(f): pd.read_parquet(f) for f in files}


# ---------------------------------------------------------------- filters
def test_filters_each_give_a_reason():
    assert F.repetition_ratio("a red circle a red circle a red circle", 3) == pytest.approx(4 / 7)
    assert F.repetition_ratio("two shapes on a white background.", 3) == 0.0
    assert F.repetition_ratio("short", 3) == 0.0
    v = F.length_filter(5, [10, 300], "long")
    assert not v.ok and v.filter == "length" and "5 tokens < 10" in v.reason
    assert not F.length_filter(301, [10, 300], "long").ok and F.length_filter(10, [10, 300], "long").ok
    assert F.repetition_filter("the cat the cat the cat the cat", 2, 0.3).filter == "repetition"
    assert F.clip_filter(0.05, 0.1).reason.startswith("CLIP alignment 0.050 < 0.1")
    assert not F.clip_filter(float("nan"), 0.1).ok
    chain = F.CaptionFilters({"long_tokens": [3, 6]}, lambda t: len(t.split()))
    verdicts, ntok, cos = chain.check(["one two", "a red circle on white", "a a a a a a"], "long")
    assert [v.filter for v in verdicts] == ["length", "", "repetition"] and ntok == [2, 5, 6]
    assert all(math.isnan(c) for c in cos)
    stats = chain.stats.as_dict()
    assert stats["long_checked"] == 3 and stats["long_passed"] == 1
    assert stats["long_rejected_length"] == stats["long_rejected_repetition"] == 1
    # an undertrained byte-level captioner's control characters: rejected first, counted
    v = F.control_filter("plain\x1c\x07 red circle")
    assert not v.ok and v.filter == "control" and "U+001C at offset 5" in v.reason
    verdicts, _, _ = chain.check(["a red\x00 circle on white", "a \u202eblue star on beige"], "long")
    assert [v.filter for v in verdicts] == ["control", "control"]
    assert chain.stats.as_dict()["long_rejected_control"] == 2
    with pytest.raises(ValueError, match="recaption.long_tokens"):
        F.resolve_config({"long_tokens": [300, 10]})
    with pytest.raises(ValueError, match="recaption.max_repetition"):
        F.resolve_config({"max_repetition": 2})


# ---------------------------------------------------------------- the job
def test_sidecars_cover_every_record_and_make_a_new_version(world, lenient_run):
    out, summary, man = lenient_run["out"], lenient_run["summary"], world["manifest"]
    side = _sidecars(out)
    assert sorted(side) == ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    df = pd.concat(side.values(), ignore_index=True)
    # counts balance: one row per manifest record, the original caption carried over
    assert len(df) == len(man) == summary["records"] == 24
    assert sorted(df["key"]) == sorted(man["key"])
    assert dict(zip(df["key"], df["original"])) == dict(zip(man["key"], man["caption"]))
    for shard_name, part in side.items():  # each sidecar holds exactly its shard's records
        shard = shard_name.replace(".parquet", ".tar")
        assert set(part["key"]) == set(man.loc[man["shard"] == f"shards/{shard}", "key"])
    for kind in ("short", "long"):
        # lenient filters pass every sample, except one with control characters (the untrained
        # byte-level CoCa emits them): that record falls back to its original caption
        fb = df[f"{kind}_fallback"]
        assert set(df[f"{kind}_verdict"]) <= {"pass", "retry", "fallback"}
        assert (df.loc[fb, f"{kind}_reason"].str.startswith("control character")).all()
        assert (df.loc[fb, kind] == df.loc[fb, "original"]).all()
        assert (df[kind].str.len() > 0).all() and (df.loc[~fb, kind] != df.loc[~fb, "original"]).all()
        assert summary["filters"][f"{kind}_checked"] == 24 + df[f"{kind}_retries"].sum()
    assert (df.loc[~df["long_fallback"], "long_clip"].between(-1, 1)).all(), "the CoCa's own CLIP scores every caption"
    assert summary["captions_generated"] >= 48 and summary["tokens_per_s"] > 0 and summary["captions_per_s"] > 0
    # images are never rewritten
    for uri, digest in lenient_run["shard_hashes"].items():
        assert hashlib.sha256(storage.read_bytes(uri)).hexdigest() == digest
    # the new dataset version: lineage to the parent, the parent's shards, counts
    meta = ds.info(out)
    parent = ds.info(world["data"])
    assert meta["parent"] == world["data"] and meta["parent_version"] == parent["content_hash"]
    assert meta["records"] == 24 and meta["captions"]["long"]["fallback"] == int(df["long_fallback"].sum())
    assert meta["version"]
    assert ds.shard_list(out) == ds.shard_list(world["data"])  # readers follow the pointer
    from model_code.text.blend import load_sidecars
    assert len(load_sidecars(out)) == 24  # the training loader reads the sidecars as they are


def test_impossible_clip_threshold_falls_back_to_the_original(world):
    out = str(world["root"] / "fallback")
    s = recaption(world["data"], out, world["coca"], world["tok"], preset=preset(min_clip_cosine=1.01),
                  max_retries=1, mlflow=False, progress=False)
    df = pd.concat(_sidecars(out).values(), ignore_index=True)
    for kind in ("short", "long"):
        assert (df[f"{kind}_verdict"] == "fallback").all() and df[f"{kind}_fallback"].all()
        assert (df[kind] == df["original"]).all()
        assert (df[f"{kind}_retries"] == 1).all()
        assert (df[f"{kind}_reason"].str.startswith("CLIP alignment")
                | df[f"{kind}_reason"].str.startswith("control character")).all()
        # every sample was drawn and rejected: the first and one retry per record
        f = s["filters"]
        assert f[f"{kind}_rejected_clip"] + f[f"{kind}_rejected_control"] == 2 * 24 and f[f"{kind}_passed"] == 0
    assert s["fallback"] == {"short": 24, "long": 24}
    assert ds.info(out)["fallback_rate"] == {"short": 1.0, "long": 1.0}


def test_rejected_samples_are_redrawn(world, lenient_run):
    """Threshold at the median alignment of the first samples: the lower half is redrawn (same
    seeds, so the same first samples), up to max_retries, then falls back."""
    lenient = pd.concat(_sidecars(lenient_run["out"]).values(), ignore_index=True)
    first = lenient[lenient["long_retries"] == 0]
    # first samples even the lenient filters rejected (control characters) are redrawn here too
    control = set(lenient.loc[lenient["long_retries"] > 0, "key"])
    thr = float(first["long_clip"].median())
    out = str(world["root"] / "retry")
    recaption(world["data"], out, world["coca"], world["tok"], preset=preset(min_clip_cosine=thr),
              max_retries=2, mlflow=False, progress=False)
    df = pd.concat(_sidecars(out).values(), ignore_index=True).set_index("key")
    below = set(first.loc[first["long_clip"] < thr, "key"])
    assert below and set(df.index[df["long_verdict"] != "pass"]) == below | control
    passed = df[df["long_verdict"] != "fallback"]
    assert (passed["long_clip"] >= thr).all()
    retried = df[df["long_verdict"] == "retry"]
    assert retried["long_retries"].between(1, 2).all() and (retried["long_reason"] != "").all()
    fell = df[df["long_verdict"] == "fallback"]
    assert (fell["long_retries"] == 2).all() and (fell["long"] == fell["original"]).all()
    assert (df.loc[df["long_verdict"] == "pass", "long_retries"] == 0).all()


def test_fan_out_resume_and_finalize(world, lenient_run):
    out = str(world["root"] / "fanout")
    kw = dict(preset=preset(), mlflow=False, progress=False)
    # one shard named three ways is one shard: done once, its 10 records counted once
    s1 = recaption(world["data"], out, world["coca"], world["tok"],
                   shards=["shard-00001.tar", "shards/shard-00001.tar", "shard-00001.tar"], **kw)
    assert s1["shards_done"] == ["shard-00001.tar"] and "dataset_json" not in s1
    assert s1["records"] == 10 and all(sum(c.values()) == 10 for c in s1["verdicts"].values())
    assert not storage.exists(storage.join(out, "dataset.json"))
    with pytest.raises(ValueError, match="have no sidecar yet"):
        finalize(out, world["data"])
    one = storage.read_bytes(sidecar_uri(out, 1))
    # a torn sidecar (a killed writer on a store without rename) is redone, not trusted
    storage.write_bytes(sidecar_uri(out, 2), b"PAR1 torn")
    # naming every shard (one twice) is the whole dataset: it is sealed as a new version
    s2 = recaption(world["data"], out, world["coca"], world["tok"],
                   shards=["shard-00000.tar", "shard-00001.tar", "shard-00002.tar", "shards/shard-00002.tar"], **kw)
    assert s2["shards_skipped"] == ["shard-00001.tar"]
    assert s2["shards_done"] == ["shard-00000.tar", "shard-00002.tar"] and s2["dataset_json"]
    assert s2["records"] == 24 and s2["records_captioned"] == 14
    assert all(sum(c.values()) == 24 for c in s2["verdicts"].values())
    assert storage.read_bytes(sidecar_uri(out, 1)) == one, "a finished shard is not redone"
    # per-shard seeds: the fanned-out, resumed run wrote the same captions as one whole run
    whole = _sidecars(lenient_run["out"])
    for name, part in _sidecars(out).items():
        pd.testing.assert_series_equal(part["long"], whole[name]["long"])
        pd.testing.assert_series_equal(part["short"], whole[name]["short"])
    assert ds.info(out)["records"] == 24
    # the version is the captions' content: this run's sidecars differ from the whole run's in their
    # timings, not in their captions, so it is the same version
    assert ds.info(out)["version"] == ds.info(lenient_run["out"])["version"]
    s3 = recaption(world["data"], out, world["coca"], world["tok"], **kw)
    assert s3["shards_done"] == [] and len(s3["shards_skipped"]) == 3
    assert s3["records"] == 24 and s3["records_captioned"] == 0   # what the sidecars cover, all reused
    # a finished sidecar is reused only for the same inputs: other settings (or a captioner, CLIP,
    # tokenizer or dataset changed in place) stop the run with what changed, and nothing is rewritten
    with pytest.raises(ValueError, match=r"changed: settings\.temperature"):
        recaption(world["data"], out, world["coca"], world["tok"], temperature=0.3, **kw)
    assert storage.read_bytes(sidecar_uri(out, 1)) == one


def test_the_version_changes_with_a_caption(world, lenient_run, tmp_path):
    out = str(tmp_path / "edited")
    gather_sidecars(out, [lenient_run["out"]])
    t = pq.read_table(sidecar_uri(out, 0))
    longs = t.column("long").to_pylist()
    t = t.set_column(t.schema.get_field_index("long"), "long", pa.array(["another caption"] + longs[1:]))
    pq.write_table(t, sidecar_uri(out, 0))
    assert finalize(out, world["data"])["version"] != ds.info(lenient_run["out"])["version"]


def test_parent_is_recorded_absolute_and_read_from_anywhere(world, lenient_run, tmp_path, monkeypatch):
    """The parent typed relative to the working directory is recorded absolute, so the dataset's
    shards, validation and lineage are its parent's from any directory, even one holding another
    dataset of the same name."""
    from model_code.data.version import lineage
    monkeypatch.chdir(world["root"])
    out = str(tmp_path / "rel")
    gather_sidecars(out, [lenient_run["out"]])
    meta = finalize(out, "data")
    assert meta["parent"] == meta["shards_from"] == world["data"]
    assert meta["files"]["shards"].startswith(world["data"] + os.sep)
    decoy = tmp_path / "elsewhere" / "data" / "shards"
    decoy.mkdir(parents=True)
    (decoy / "shard-00000.tar").write_bytes(b"")
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert ds.shard_list(out) == ds.shard_list(world["data"]) and len(ds.shard_list(out)) == 3
    assert lineage(out)["parent"] == world["data"]


def test_out_inside_the_dataset_is_refused(world, tmp_path):
    """out/dataset.json would overwrite the dataset's own: refused before any work, nothing written."""
    kw = dict(preset=preset(), mlflow=False, progress=False)
    before = storage.read_bytes(storage.join(world["data"], "dataset.json"))
    with pytest.raises(ValueError, match="out .* is the dataset .*give an --out outside it"):
        recaption(world["data"], world["data"] + "/", world["coca"], world["tok"], **kw)
    with pytest.raises(ValueError, match="out .* is inside the dataset"):
        recaption(world["data"], os.path.join(world["data"], "recaptioned"), world["coca"], world["tok"], **kw)
    with pytest.raises(ValueError, match="is the dataset"):
        finalize(world["data"], world["data"])
    assert storage.read_bytes(storage.join(world["data"], "dataset.json")) == before
    assert not os.path.exists(os.path.join(world["data"], "captions"))
    assert not os.path.exists(os.path.join(world["data"], "recaptioned"))
    other = tmp_path / "other"   # another dataset (not a recaption) as out
    other.mkdir()
    (other / "dataset.json").write_text(json.dumps({"kind": "shapes"}))
    with pytest.raises(ValueError, match="already holds a dataset"):
        finalize(str(other), world["data"])


@pytest.fixture(scope="module")
def trained_captioner(world):
    """A CoCa trained (one step) by the project's trainer: its train_state.json records which
    tokenizer it was trained with."""
    from model_code.train.run import train_part
    torch.manual_seed(0)
    out = str(world["root"] / "trained-coca")
    train_part("captioner", {"clip": CLIP_CFG, "captioner": {"max_text_tokens": 40, "width": 32, "layers": 1,
                                                             "heads": 2},
                             "train": {"steps": {"captioner": 1}, "batch_size": 4, "precision": "32-true"}},
               world["data"], out, deps={"tokenizer": world["tok"]}, mlflow=False)
    return out


def test_a_tokenizer_other_than_the_captioners_is_refused(world, trained_captioner, tmp_path, caplog):
    """Another BPE of the same vocabulary size fits the CoCa's shapes and would caption in garbage:
    refused where the captioner records its tokenizer, logged as unverified where it does not."""
    man = world["manifest"]
    other = TextTokenizer.train(list(man["caption"]) + [c[::-1] for c in man["curated_caption"] if c], 400, 40)
    assert other.vocab_size == TextTokenizer.load(world["tok"]).vocab_size
    other.save(str(tmp_path / "tok2"))
    out = str(tmp_path / "o")
    with pytest.raises(ValueError, match=f"the captioner \\({trained_captioner}\\) was trained with the "
                                         f"tokenizer {world['tok']} .* not with {tmp_path / 'tok2'}"):
        recaption(world["data"], out, trained_captioner, str(tmp_path / "tok2"), preset=preset(), mlflow=False,
                  progress=False)
    assert not os.path.exists(out)
    CoCaCaptioner(trained_captioner, world["tok"])    # its own tokenizer
    with caplog.at_level(logging.WARNING, logger="model_code.recaption.captioner"):
        CoCaCaptioner(world["coca"], str(tmp_path / "tok2"))   # no train_state.json: the vocabulary only
    assert "the match could not be verified" in caplog.text


def test_bad_arguments_are_named(world, tmp_path):
    kw = dict(preset=preset(), mlflow=False, progress=False)
    out = str(tmp_path / "o")
    with pytest.raises(ValueError, match="not a shard of"):
        recaption(world["data"], out, world["coca"], world["tok"], shards=["shard-00009.tar"], **kw)
    with pytest.raises(ValueError, match="not a shard name"):
        recaption(world["data"], out, world["coca"], world["tok"], shards=["images.tar"], **kw)
    with pytest.raises(ValueError, match="recaption.batch_size"):
        recaption(world["data"], out, world["coca"], world["tok"], batch_size=0, **kw)
    with pytest.raises(ValueError, match="recaption.top_p"):
        recaption(world["data"], out, world["coca"], world["tok"], top_p=1.5, **kw)
    with pytest.raises(ValueError, match="no CoCa model"):
        recaption(world["data"], out, str(tmp_path / "nothing"), world["tok"], **kw)
    with pytest.raises(ValueError, match="needs `tokenizer`"):
        recaption(world["data"], out, "oracle", None, clip=world["coca"] + "/no-clip", **kw)
    with pytest.raises(FileNotFoundError, match="no dataset.json"):
        recaption(str(tmp_path / "empty"), out, world["coca"], world["tok"], **kw)
    assert not os.path.exists(out + "/captions")


# ---------------------------------------------------------------- the report
def test_report_scores_captions_against_the_truth(world, tmp_path, monkeypatch):
    """The oracle captioner (a perfect one: the oracle's parse written out) against the alt-text:
    the report must find the synthetic captions truthful and complete and the alt-text neither;
    with a tracking URI the job and the report land in MLflow."""
    from model_code.recaption.report import caption_report
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    out = str(world["root"] / "oracle")
    s = recaption(world["data"], out, "oracle", world["tok"], clip="none", preset=preset(long_tokens=[10, 300]),
                  progress=False)
    assert s["fallback"] == {"short": 0, "long": 0} and not s["uses_clip"]
    r = caption_report(out, str(tmp_path / "rep" / "captions.md"), n_grid=4, mlflow=True)
    q = r["quality"]
    assert q["long"]["n"] == 24 and q["long"]["precision"] == 1.0 and q["long"]["recall"] > 0.95
    assert q["long"]["hallucinations_per_caption"] == 0 and q["short"]["precision"] == 1.0
    assert q["short"]["recall"] < q["long"]["recall"], "short captions leave out geometry"
    assert q["original"]["precision"] < 0.7 and q["original"]["recall"] < 0.2
    assert q["curated (human reference)"]["n"] == 12 and q["curated (human reference)"]["precision"] == 1.0
    assert r["long_vs_original"]["recall_gain"] > 0.7
    # lengths in the project tokenizer: long captions are the long ones
    assert r["tokens"]["long"]["mean"] > 2 * r["tokens"]["original"]["mean"]
    assert r["verdicts"]["long"]["final_pass_rate"] == 1.0
    md = open(tmp_path / "rep" / "captions.md").read()
    assert "| long |" in md and "![captions](captions.png)" in md
    from PIL import Image
    assert Image.open(tmp_path / "rep" / "captions.png").size[0] > 4 * 160
    assert json.load(open(tmp_path / "rep" / "captions.json"))["records"] == 24
    import mlflow
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    job_run = client.get_run(s["mlflow_run_id"])
    assert job_run.data.metrics["records"] == 24 and job_run.data.metrics["captions_per_s"] > 0
    rep_run = client.get_run(r["mlflow_run_id"])
    assert rep_run.data.metrics["quality/long/precision"] == 1.0
    assert {a.path for a in client.list_artifacts(r["mlflow_run_id"], "caption_report")} == {
        "caption_report/captions.md", "caption_report/captions.json", "caption_report/captions.png"}
