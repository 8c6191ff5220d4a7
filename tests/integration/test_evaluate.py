"""evaluate() end to end and the three paper tables, on tiny untrained bundles, with MLflow on a
temporary SQLite store. Untrained models draw no shapes: the numbers are checked for shape and
consistency, not quality (tests/e2e trains models that draw)."""
import json
import os

import pytest

from tests.bundles import build_parts, evaluation_env, tiny_bundle


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    with evaluation_env(root) as ds:
        yield {"root": root, "ds": ds, "dalle": tiny_bundle(str(root), "dalle")}


def test_evaluate_end_to_end(env):
    from mlflow import MlflowClient

    from model_code.evaluate.evaluate import evaluate
    from model_code.evaluate.gates import gate
    out = str(env["root"] / "eval")
    r = evaluate(env["dalle"], env["ds"], out, n_per_category=1, samples_per_prompt=2, candidates=2)
    m = r["metrics"]
    from model_code.evaluate.prompts import DEFAULT_CATEGORIES
    assert set(r["per_category"]) == set(DEFAULT_CATEGORIES)   # GenEval's six + size, short, long
    for cat, v in r["per_category"].items():
        assert v["images"] == 2 and 0.0 <= v["exact"] <= v["constraint"] <= 1.0, cat
        assert m[f"pf.{cat}.exact"] == v["exact"] and -1.0 <= v["clip_score"] <= 1.0
    assert m["n_prompts"] == 9 and m["n_images"] == 18 and m["n_real_images"] > 0
    for key in ("pf.exact", "pf.geneval", "pf.constraint", "clip_score", "diversity", "fd_clip", "dvae.psnr",
                "dvae.perplexity", "dvae.dead_codes"):
        assert key in m, key
    assert m["fd_clip"] >= 0.0 and m["diversity"] >= 0.0
    # the text-ignoring floor, without the constants real scenes would give (never invalid, no blobs)
    assert "chance.pf.exact" in m and not {"chance.pf.invalid", "chance.pf.blob"} & set(m)
    # the report and its pictures
    report = open(r["report"]).read()
    assert "| position |" in report and "![colors](samples-colors.png)" in report and "## Shapes-GenEval" in report
    for f in ("samples-long.png", "per_category.csv", "metrics.json", "prompts.json", "rows.json"):
        assert os.path.exists(os.path.join(out, f)), f
    assert json.load(open(os.path.join(out, "metrics.json")))["n_images"] == 18
    # evaluated as served: every prompt was rewritten (and judged as written)
    rows = json.load(open(os.path.join(out, "rows.json")))
    assert all(r["revised"] and r["revised"] != r["text"] for r in rows if r["category"] != "long")
    # the MLflow run: metrics, params, the per-category table and the report as artifacts
    c = MlflowClient()
    run = c.get_run(r["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["pf.short.exact"] == m["pf.short.exact"]
    assert run.data.params["recipe"] == "dalle" and run.data.params["candidates"] == "2"
    arts = {a.path for a in c.list_artifacts(r["run_id"])}
    assert {"report.md", "per_category.json", "samples-short.png"} <= arts
    # a re-run with the same inputs (a resumed pipeline) reuses the finished evaluation
    again = evaluate(env["dalle"], env["ds"], out, n_per_category=1, samples_per_prompt=2, candidates=2)
    assert again["run_id"] == r["run_id"] and again["metrics"] == m
    # an untrained bundle fails the tiny preset's gates
    assert r["inputs"]["recipe"] == "dalle" and r["inputs"]["run_id"] == r["run_id"]
    assert gate(m, "tiny", inputs=r["inputs"])["verdict"] == "failed"


def test_evaluate_rejects_bad_settings(env):
    from model_code.evaluate.evaluate import evaluate
    with pytest.raises(ValueError, match="sampling"):
        evaluate(env["dalle"], env["ds"], str(env["root"] / "bad"), sampling={"decoder_guidance": 2.0},
                 mlflow=False)
    with pytest.raises(ValueError, match="n_per_category"):
        evaluate(env["dalle"], env["ds"], str(env["root"] / "bad"), n_per_category=0, mlflow=False)
    with pytest.raises(ValueError, match=r"sampling.temperature: must be a finite number >= 0, got nan"):
        evaluate(env["dalle"], env["ds"], str(env["root"] / "bad"), sampling={"temperature": float("nan")},
                 mlflow=False)
    with pytest.raises(ValueError, match=r"sampling.candidates: must be an integer >= 1, got 0"):
        evaluate(env["dalle"], env["ds"], str(env["root"] / "bad"), candidates=0, mlflow=False)


def test_prompt_set_beside_the_dataset_is_reused(env):
    from model_code.evaluate.evaluate import eval_config, load_prompts
    from model_code.evaluate.prompts import heldout_prompts, read_prompts
    made = heldout_prompts(env["ds"], 1, seed=5)                      # ds/prompts.json
    try:
        out = str(env["root"] / "reuse")
        ps, source = load_prompts(env["ds"], out, eval_config("tiny", n_per_category=1, seed=5))
        assert ps == made and source.endswith("prompts.json")
        ps2, source2 = load_prompts(env["ds"], out, eval_config("tiny", n_per_category=1, seed=6))
        assert ps2 != made and source2.startswith("held out")       # other settings: a new set
        assert read_prompts(out + "/prompts.json")[0] == ps2
    finally:
        os.remove(os.path.join(env["ds"], "prompts.json"))


def test_tables_at_tiny_size(env, capsys):
    from model_code.evaluate import tables as T
    md = str(env["root"] / "docs" / "results.md")
    cap = T.table_captions({"original": env["dalle"], "synthetic": env["dalle"], "blend": env["dalle"]},
                           env["ds"], str(env["root"] / "t-captions"), n_per_category=1, samples_per_prompt=1,
                           sampling={"candidates": 1}, results_md=md)
    assert [r["policy"] for r in cap["rows"]] == ["original", "synthetic", "blend"]
    # one bundle three times, same prompts and seeds: identical numbers, every claim a tie
    assert len({(r["short_constraint"], r["long_constraint"], r["clip_score"]) for r in cap["rows"]}) == 1
    assert cap["markdown"].count("**within noise (difference +0.000") == 4
    # one prompt per kind: its standard error is undefined, and null in the table's JSON (a bare
    # NaN is not JSON: strict readers refuse the file)
    rows = json.loads((env["root"] / "t-captions" / "captions.json").read_text(),
                      parse_constant=lambda c: pytest.fail(f"{c} in captions.json"))
    assert rows[0]["short_constraint_se"] is None and cap["rows"][0]["short_constraint_se"] is None

    rr = T.table_rerank(env["dalle"], env["ds"], str(env["root"] / "t-rerank"), budgets=(1, 2, 4),
                        n_per_category=1, categories=("short", "color"), results_md=md)
    assert [r["budget"] for r in rr["rows"]] == [1, 2, 4]
    assert [r["groups_per_prompt"] for r in rr["rows"]] == [4, 2, 1]
    clip = [r["clip_score"] for r in rr["rows"]]
    assert clip == sorted(clip)        # the mean CLIP-best of N can only rise with N

    # ranked by the bundle's captioner instead: the same pool (N = 1 keeps every candidate, so
    # that row is the CLIP table's), the ranker named in the report; asked of a bundle with no
    # captioner, the error says so
    with_cap = tiny_bundle(str(env["root"] / "with-captioner"), "dalle", captioner=True)
    rc = T.table_rerank(with_cap, env["ds"], str(env["root"] / "t-rerank-cap"), budgets=(1, 2, 4),
                        n_per_category=1, categories=("short", "color"), sampling={"rerank": "captioner"},
                        mlflow=False, results_md=False)
    assert "as ranked by the captioner's log p(prompt | image)" in rc["markdown"]
    assert rc["rows"][0]["pf_constraint"] == rr["rows"][0]["pf_constraint"]
    assert rc["rows"][0]["clip_score"] == pytest.approx(rr["rows"][0]["clip_score"], abs=1e-5)
    with pytest.raises(ValueError, match="needs a bundle with a captioner part"):
        T.table_rerank(env["dalle"], env["ds"], str(env["root"] / "t-rerank-none"), budgets=(1, 2),
                       n_per_category=1, categories=("short",), sampling={"rerank": "captioner"},
                       mlflow=False, results_md=False)

    # the CLI face: --sampling reaches the table (its settings line), a bad key is named
    from easel.cli import main
    cli = ["table", "rerank", "--dataset", env["ds"], "--bundle", f"bundle={env['dalle']}", "--budgets", "1,2",
           "--n-per-category", "1", "--no-mlflow", "--json"]
    assert main(cli + ["--out", str(env["root"] / "t-cli"), "--sampling", "temperature=0.9"]) == 0
    assert "'temperature': 0.9" in open(env["root"] / "t-cli" / "rerank.md").read()
    assert main(cli + ["--out", str(env["root"] / "t-cli-bad"), "--sampling", "temprature=0.9"]) != 0
    assert "temprature" in capsys.readouterr().err

    root = env["root"]
    text_parts = build_parts(str(root / "parts-text"), "unclip", overrides={"decoder": {"conditioning": "text"}})
    from model_code.generate import save_bundle
    text = save_bundle(str(root / "bundle-text"), "unclip", text_parts, preset="tiny")
    unclip = tiny_bundle(str(root), "unclip")
    fast = {"prior_steps": 2, "decoder_steps": 2, "upsample": False}
    gd = T.table_guidance(unclip, text, env["ds"], str(root / "t-guidance"), scales=(1.0, 3.0), n_per_category=1,
                          samples_per_prompt=2, categories=("short", "long"), sampling=fast, results_md=md)
    assert [(r["model"], r["scale"]) for r in gd["rows"]] == [("unCLIP", 1.0), ("unCLIP", 3.0),
                                                              ("text decoder", 1.0), ("text decoder", 3.0)]
    assert all(r["diversity"] is not None and r["diversity"] >= 0 for r in gd["rows"])
    with pytest.raises(ValueError, match="text_decoder_bundle"):
        T.table_guidance(unclip, unclip, env["ds"], str(root / "t-bad"), mlflow=False, results_md=False)

    # docs/results.md: one section per table, rewritten in place, plots beside it
    text_md = open(md).read()
    for key in ("captions", "rerank", "guidance"):
        assert text_md.count(f"<!-- easel-table:{key} -->") == 1
        assert os.path.exists(root / "docs" / "results" / f"{key}.png")
    T.update_results(md, "rerank", "## replaced")
    again = open(md).read()
    assert again.count("<!-- easel-table:rerank -->") == 1 and "## replaced" in again
    assert again.index("easel-table:captions") < again.index("easel-table:rerank") < again.index("easel-table:guidance")


def test_a_killed_table_or_evaluation_resumes_at_its_next_batch(env, monkeypatch):
    """Killed after its first batch, a re-run draws only the batches it had not written and measures
    what an uninterrupted run measures; a finished run leaves no samples behind."""
    from model_code.config import load_preset
    from model_code.evaluate import tables as T
    from model_code.evaluate.evaluate import evaluate
    from model_code.generate import DalleGenerator
    preset = load_preset("tiny", {"evaluate": {"batch_size": 2}})   # several batches from a few prompts
    real_sample, drawn = DalleGenerator.sample, []

    def killed_after(n):
        def sample(self, *a, **kw):
            if n is not None and len(drawn) >= n:
                raise KeyboardInterrupt("preempted")
            drawn.append(1)
            return real_sample(self, *a, **kw)
        return sample

    kw = dict(budgets=(1, 2), n_per_category=1, categories=("short", "colors", "counting"), preset=preset,
              mlflow=False, results_md=False)
    whole = T.table_rerank(env["dalle"], env["ds"], str(env["root"] / "t-whole"), **kw)
    out = str(env["root"] / "t-killed")
    monkeypatch.setattr(DalleGenerator, "sample", killed_after(1))
    drawn.clear()
    with pytest.raises(KeyboardInterrupt):
        T.table_rerank(env["dalle"], env["ds"], out, **kw)
    assert len(os.listdir(os.path.join(out, "samples"))) == 1     # the batch drawn before the kill
    monkeypatch.setattr(DalleGenerator, "sample", killed_after(None))
    drawn.clear()
    resumed = T.table_rerank(env["dalle"], env["ds"], out, **kw)
    assert len(drawn) == 1                                        # 3 prompts in batches of 2: only the last
    assert [r["clip_score"] for r in resumed["rows"]] == [r["clip_score"] for r in whole["rows"]]
    assert [r["pf_constraint"] for r in resumed["rows"]] == [r["pf_constraint"] for r in whole["rows"]]
    assert not os.path.exists(os.path.join(out, "samples"))

    ekw = dict(n_per_category=1, samples_per_prompt=1, candidates=1, preset=preset, mlflow=False,
               categories=("short", "colors", "counting", "position"))
    full = evaluate(env["dalle"], env["ds"], str(env["root"] / "e-whole"), **ekw)
    out = str(env["root"] / "e-killed")
    monkeypatch.setattr(DalleGenerator, "sample", killed_after(1))
    drawn.clear()
    with pytest.raises(KeyboardInterrupt):
        evaluate(env["dalle"], env["ds"], out, **ekw)
    monkeypatch.setattr(DalleGenerator, "sample", killed_after(None))
    drawn.clear()
    again = evaluate(env["dalle"], env["ds"], out, **ekw)
    assert len(drawn) == 1 and again["metrics"]["n_images"] == full["metrics"]["n_images"] == 4
    assert {k: v for k, v in again["metrics"].items() if k != "seconds"} == \
        {k: v for k, v in full["metrics"].items() if k != "seconds"}
    assert not os.path.exists(os.path.join(out, "samples"))


def test_a_dataset_that_is_not_the_shapes_world_is_said_so(env, tmp_path):
    """A user's own photos have no scene graphs: the oracle's prompt following is Shapes-world
    prompts only, and the report says so rather than letting it pass for this domain's score."""
    from model_code.data.ingest import ingest
    from model_code.evaluate.evaluate import evaluate
    from tests.unit.data import hostile
    src = tmp_path / "photos"
    src.mkdir()
    for i in range(12):
        hostile.smooth_image(i, 48, 48).save(src / f"p{i}.png")
        (src / f"p{i}.txt").write_text(f"a photo number {i}")
    ds = str(tmp_path / "ds")
    ingest(str(src), ds, size=32, heldout_fraction=0.5, workers=1, progress=False)
    r = evaluate(env["dalle"], ds, str(tmp_path / "eval"), n_per_category=1, samples_per_prompt=1, mlflow=False)
    assert "chance.pf.exact" not in r["metrics"] and "fd_clip" in r["metrics"]
    assert "holds no Shapes-world scene graphs" in open(r["report"]).read()


def test_a_dataset_the_bundle_cannot_be_judged_on_is_refused(env, tmp_path):
    """Found by a tester: an evaluation on an empty ingest ran (n_real_images 0, a warning), and
    one on a 64 px dataset of a 32 px bundle ran without a word; training refuses the same size
    mismatch. Each is an error naming what is wrong, before anything is generated."""
    from model_code.data.ingest import ingest
    from model_code.data.synth import synthesize
    from model_code.evaluate import tables as T
    from model_code.evaluate.evaluate import evaluate
    (tmp_path / "empty-src").mkdir()
    ingest(str(tmp_path / "empty-src"), str(tmp_path / "empty"), size=32, workers=1, progress=False)
    synthesize(str(tmp_path / "src"), n=12, size=64, seed=0, curated_fraction=0.25, workers=1)
    ingest(str(tmp_path / "src"), str(tmp_path / "ds64"), size=64, heldout_fraction=0.3, workers=1, progress=False)
    ingest(str(tmp_path / "src"), str(tmp_path / "no-heldout"), size=32, heldout_fraction=0.0, workers=1,
           progress=False)
    kw = dict(n_per_category=1, samples_per_prompt=1, candidates=1, mlflow=False)
    for ds, match in [("empty", r"holds no accepted records \(input 0"),
                      ("ds64", r"images are 64x64, but the bundle's are 32x32"),
                      ("no-heldout", r"has no held-out images")]:
        out = tmp_path / f"eval-{ds}"
        with pytest.raises(ValueError, match=match):
            evaluate(env["dalle"], str(tmp_path / ds), str(out), **kw)
        assert not (out / "prompts.json").exists()   # refused before the prompts were drawn
    with pytest.raises(ValueError, match=r"images are 64x64, but the bundle's are 32x32"):
        T.table_rerank(env["dalle"], str(tmp_path / "ds64"), str(tmp_path / "t64"), budgets=(1,), mlflow=False,
                       results_md=False)


def test_table_sweeps_are_checked_as_the_settings_they_become(env, capsys):
    """Found by a tester: `--scales nan,inf` made a table of identical rows and wrote bare NaN
    (not JSON), and `--budgets abc` failed with int()'s message: a guidance scale and a budget are
    checked as sampling settings, and a list that is not numbers is a usage error naming the option."""
    from easel.cli import main
    from model_code.evaluate import tables as T
    for scales in ((float("nan"),), (1.0, float("inf")), (-1.0,)):
        with pytest.raises(ValueError, match=r"scales: .* is not a valid decoder_guidance"):
            T.table_guidance(env["dalle"], env["dalle"], env["ds"], str(env["root"] / "t-nan"), scales=scales,
                             mlflow=False, results_md=False)
    for budgets in ((0,), (1, 2.5)):
        with pytest.raises(ValueError, match=r"budgets: .* is not a valid candidates"):
            T.table_rerank(env["dalle"], env["ds"], str(env["root"] / "t-nan"), budgets=budgets, mlflow=False,
                           results_md=False)
    base = ["table", "rerank", "--dataset", env["ds"], "--out", str(env["root"] / "t-usage"),
            "--bundle", f"bundle={env['dalle']}"]
    with pytest.raises(SystemExit) as e:
        main(base + ["--budgets", "abc"])
    assert e.value.code == 2
    assert "argument --budgets: expected comma-separated integers, got 'abc'" in capsys.readouterr().err
    assert main(["table", "guidance", "--dataset", env["ds"], "--out", str(env["root"] / "t-usage"), "--bundle",
                 f"unclip={env['dalle']}", "--bundle", f"text={env['dalle']}", "--scales", "nan,inf"]) == 1
    assert "scales: nan is not a valid decoder_guidance" in capsys.readouterr().err


def test_a_gated_evaluation_says_its_verdict_and_fails_with_its_gate(env, tmp_path, capsys):
    """Found by a tester: `easel evaluate --gate-model M --gate-version V` exited 0 with a failed
    gate and printed no verdict, and a missing --gate-version failed only after the whole
    evaluation. The options go together and are checked first; the verdict and its reasons go to
    stderr and into report.md; a failed gate exits 1 (as `easel data validate`), a passed one 0."""
    from easel.cli import main
    from model_code.registry.registry import gate_record, register_bundle
    name = "easel-eval-gated"
    cli = ["evaluate", env["dalle"], "--dataset", env["ds"], "--n-per-category", "1", "--samples", "1",
           "--candidates", "1"]
    out = tmp_path / "eval"
    assert main(cli + ["--out", str(out), "--gate-model", name]) == 2
    assert "--gate-model and --gate-version go together" in capsys.readouterr().err
    assert main(cli + ["--out", str(out), "--gate-model", name, "--gate-version", "1"]) == 1
    assert f"no registered model '{name}'" in capsys.readouterr().err
    version = register_bundle(env["dalle"], name)["version"]
    assert main(cli + ["--out", str(out), "--gate-model", name, "--gate-version", "9"]) == 1
    assert f"model '{name}' has no version 9" in capsys.readouterr().err
    assert not out.exists()   # each refused before the evaluation ran

    # the untrained bundle fails the tiny preset's gates
    assert main(cli + ["--out", str(out), "--gate-model", name, "--gate-version", version, "--json"]) == 1
    cap = capsys.readouterr()
    assert f"easel: error: gate failed for {name} version {version}: clip_score = " in cap.err
    assert json.loads(cap.out.strip().splitlines()[-1])["gate"]["verdict"] == "failed"
    report = (out / "report.md").read_text()
    assert f"## Gate: {name} version {version}" in report and "**Gate: failed**: clip_score" in report
    assert report.index("## Gate") < report.index("## Prompt following per category")
    assert gate_record(name, version)["verdict"] == "failed"

    # gates it clears (a preset file over tiny): exit 0, the verdict on stderr, the report's section replaced
    lenient = tmp_path / "lenient.yaml"
    lenient.write_text("extends: tiny\nevaluate:\n  gates:\n    clip_score: {min: -1.0, relative: false}\n"
                       "    pf.invalid: {max: 1.0}\n    dvae.psnr: {min: 0.0, recipes: [dalle]}\n")
    assert main(cli + ["--out", str(out), "--gate-model", name, "--gate-version", version,
                       "--preset", str(lenient)]) == 0
    assert f"gate passed for {name} version {version}: all " in capsys.readouterr().err
    report = (out / "report.md").read_text()
    assert report.count("## Gate:") == 1 and "**Gate: passed**" in report
    assert gate_record(name, version)["verdict"] == "passed"
