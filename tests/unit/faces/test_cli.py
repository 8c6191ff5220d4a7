"""The `easel` command's contract: --json summaries, one-line errors, exit codes."""
import json
import subprocess
import sys

import pytest

from easel.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "easel", *args], capture_output=True, text=True,
                          timeout=300)


def test_help_lists_commands():
    r = run("--help")
    assert r.returncode == 0
    for c in ("data", "run"):
        assert c in r.stdout


def test_no_command_is_usage_error(capsys):
    assert main([]) == 2


def test_unknown_option_exits_2():
    r = run("data", "synth", "--out", "x", "--nope")
    assert r.returncode == 2
    assert "unrecognized arguments: --nope" in r.stderr


def test_synth_json_summary_is_last_line(tmp_path):
    r = run("data", "synth", "--out", str(tmp_path / "raw"), "--n", "12", "--size", "32", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["n"] == 12 and summary["out"] == str(tmp_path / "raw")


def test_error_is_one_line_and_nonzero(tmp_path):
    r = run("data", "ingest", str(tmp_path / "does-not-exist"), "--out", str(tmp_path / "o"), "--json")
    assert r.returncode == 1
    err = [l for l in r.stderr.strip().splitlines() if l.startswith("easel: error:")]
    assert len(err) == 1, r.stderr
    assert "does-not-exist" in err[0]


def test_bad_preset_is_clear(tmp_path):
    r = run("run", "local", "--preset", "huge", "--out", str(tmp_path))
    assert r.returncode == 1
    assert "unknown preset 'huge'" in r.stderr


def test_version_names_package_and_commit():
    r = run("--version")
    assert r.returncode == 0, r.stderr
    from importlib import metadata
    assert r.stdout.startswith(f"easel {metadata.version('easel')}")


@pytest.mark.parametrize("where", ["before", "after"])
def test_global_options_before_or_after_the_subcommand(tmp_path, where, capsys):
    sub = ["data", "synth", "--out", str(tmp_path / "raw"), "--n", "4", "--size", "32"]
    args = ["-v", "--json", *sub] if where == "before" else [*sub, "-v", "--json"]
    assert main(args) == 0
    out = capsys.readouterr()
    assert json.loads(out.out.strip().splitlines()[-1])["n"] == 4
    from easel.cli import build_parser
    a = build_parser().parse_args(args)
    assert a.verbose is True and a.json is True
    a = build_parser().parse_args(sub)
    assert a.verbose is False and a.json is False


def test_data_commands_take_unset_options_from_the_preset(tmp_path, capsys):
    """`easel data synth/ingest` and `easel run local` agree: what a flag leaves unset is the
    preset's `data:` value (tiny: 32 px, 25% curated, 256 per shard, 10% held out)."""
    from model_code.config import load_preset
    d = load_preset("tiny")["data"]
    assert main(["data", "synth", "--out", str(tmp_path / "raw"), "--n", "20", "--json"]) == 0
    syn = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert syn["size"] == d["size"] and syn["n"] == 20
    assert main(["data", "ingest", str(tmp_path / "raw"), "--out", str(tmp_path / "ds"), "--quiet", "--json"]) == 0
    ing = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ing["size"] == d["size"]
    import pandas as pd
    man = pd.read_parquet(tmp_path / "ds" / "manifest.parquet")
    assert (man["width"] == d["size"]).all() and (man["split"] == "heldout").any()
    # a flag wins over the preset
    assert main(["data", "synth", "--out", str(tmp_path / "raw48"), "--n", "4", "--size", "48", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["size"] == 48
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--preset", "nope"]) != 0
    assert "unknown preset 'nope'" in capsys.readouterr().err


def test_job_render_prints_a_trainjob_or_the_legacy_pytorchjob(capsys):
    import yaml
    common = ["job", "render", "dvae", "--image", "reg/easel-cuda:1", "--nodes", "2", "--gpus-per-node", "4",
              "--data", "s3://d/shapes", "--out", "s3://w/dvae", "--set", "train.lr=0.001"]
    assert main(common) == 0
    job = yaml.safe_load(capsys.readouterr().out)
    assert job["kind"] == "TrainJob" and job["spec"]["trainer"]["numNodes"] == 2
    assert "train.lr=0.001" in job["spec"]["trainer"]["command"]
    assert main(common + ["--launcher", "pytorchjob"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["kind"] == "PyTorchJob"
    # the pods share no file system: a local path is a one-line error, nothing rendered
    assert main(["job", "render", "dvae", "--image", "i:1", "--data", "/tmp/local", "--out", "s3://w/dvae"]) == 1
    out = capsys.readouterr()
    assert not out.out.strip() and "object-store URI" in out.err   # nothing rendered
