"""Presets and overrides: numbers in every YAML spelling, bad values named by their key."""
import pytest

from model_code.config import ConfigError, load_preset, load_yaml, parse_overrides


@pytest.mark.parametrize("text, value", [("2e-3", 0.002), ("2E-3", 0.002), ("1e5", 100000.0),
                                         ("2.0e-3", 0.002), ("0.002", 0.002), (".5", 0.5),
                                         ("-3e2", -300.0), ("7", 7), ("1_000", 1000)])
def test_numbers_in_every_yaml_spelling(text, value):
    got = load_yaml(f"v: {text}")["v"]
    assert got == value and type(got) is type(value)


def test_strings_stay_strings():
    assert load_yaml("a: e5\nb: 2e\nc: abc\nd: '2e-3'") == {"a": "e5", "b": "2e", "c": "abc", "d": "2e-3"}


def test_override_without_a_dot_is_a_float():
    # was a TypeError deep inside the optimizer: PyYAML 1.1 reads 2e-3 as a string
    cfg = load_preset("tiny", parse_overrides(["train.dvae.lr=2e-3", "train.steps.dvae=10"]))
    assert cfg["train"]["dvae"]["lr"] == 0.002 and cfg["train"]["steps"]["dvae"] == 10


@pytest.mark.parametrize("item, key", [("train.dvae.lr=fast", "train.dvae.lr"), ("train.log_every=true", "train.log_every"),
                                       ("dvae=3", "dvae"), ("train.steps.dvae=[1]", "train.steps.dvae")])
def test_bad_override_value_names_the_key(item, key):
    with pytest.raises(ConfigError, match=rf"^{key}: expected"):
        load_preset("tiny", parse_overrides([item]))


def test_malformed_overrides():
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_overrides(["dvae.lr"])
    with pytest.raises(ConfigError, match="empty key"):
        parse_overrides(["dvae..lr=1"])


def test_an_extending_preset_keeps_its_own_name():
    from model_code.config import load_preset
    assert load_preset("laptop")["name"] == "laptop" and load_preset("paper")["name"] == "paper"


def test_the_library_takes_overrides_as_dicts_only():
    with pytest.raises(ConfigError, match="nested mapping"):
        load_preset("tiny", ["dvae.lr=2e-3"])


def test_training_settings_live_under_train_part_only():
    """A model's section is its config.json; `dvae.lr` is refused with the key it belongs under,
    whichever part is being trained (issue 13: training settings only under train.<part>)."""
    from model_code.train.module import resolve_train_config
    from model_code.train.parts import PARTS, section, training_keys
    for name in ("tiny", "laptop", "small", "base", "paper"):
        cfg = load_preset(name)
        for part in PARTS:
            assert not set(cfg.get(part) or {}) & training_keys(), (name, part)
            section(cfg, part)
    cfg = load_preset("tiny", parse_overrides(["dvae.lr=2e-3"]))
    with pytest.raises(ValueError, match=r"dvae.lr: training settings go under train.dvae \(e.g. train.dvae.lr\)"):
        section(cfg, "dvae")
    with pytest.raises(ValueError, match="train.dvae"):
        resolve_train_config(cfg, "transformer")
    assert resolve_train_config(load_preset("tiny", parse_overrides(["train.dvae.lr=2e-3"])), "dvae")["lr"] == 0.002


def test_a_preset_file_extends_its_sibling_before_the_built_in(tmp_path):
    """A copy of the presets (a DVC experiment edits its own) resolves `extends` beside itself."""
    (tmp_path / "tiny.yaml").write_text("data: {n: 7, size: 32}\n")
    (tmp_path / "mine.yaml").write_text("extends: tiny\ndata: {size: 64}\n")
    cfg = load_preset(str(tmp_path / "mine.yaml"))
    assert cfg["data"] == {"n": 7, "size": 64} and cfg["name"] == "mine"
    (tmp_path / "other.yaml").write_text("extends: small\n")   # no sibling: the built-in one
    assert load_preset(str(tmp_path / "other.yaml"))["data"] == load_preset("small")["data"]


@pytest.mark.parametrize("over, match", [
    ({"evalute": {"n_per_category": 2}}, r"unknown preset section 'evalute'; known: name, data, "),
    ({"data": {"shard": 8}}, r"unknown data: key 'shard'; known: n, size"),
    ({"tokenizer": {"vocab": 8}}, r"unknown tokenizer: key 'vocab'; known: vocab_size"),
])
def test_an_unknown_section_or_key_is_an_error_naming_the_known_ones(over, match):
    with pytest.raises(ConfigError, match=match):
        load_preset("tiny", over)


def test_the_owners_refuse_unknown_keys_in_their_sections():
    """evaluate: and recaption: are checked where they are read (their keys are their owners')."""
    from model_code.evaluate.evaluate import eval_config
    from model_code.recaption.job import _resolve
    for name in ("tiny", "laptop", "small", "base", "paper"):
        cfg = load_preset(name)
        eval_config(cfg), _resolve(cfg, {})
    with pytest.raises(ValueError, match=r"unknown evaluate config keys \['n_per_categry'\]; known: .*'n_per_category'"):
        eval_config(load_preset("tiny", {"evaluate": {"n_per_categry": 2}}))
    with pytest.raises(ValueError, match=r"unknown recaption config keys \['topp'\]; known: .*'top_p'"):
        _resolve(load_preset("tiny", {"recaption": {"topp": 0.5}}), {})


def test_a_null_section_is_refused_not_dropped(tmp_path):
    """`--set dvae=null` (or `dvae: null` in a preset extending tiny) used to drop the section: the
    dVAE then trained at its paper-scale defaults, a 500 MB model, without a word."""
    with pytest.raises(ConfigError, match="dvae: null would drop the whole section"):
        load_preset("tiny", parse_overrides(["dvae=null"]))
    with pytest.raises(ConfigError, match="train.dvae: null would drop"):
        load_preset("tiny", parse_overrides(["train.dvae=null"]))
    assert load_preset("tiny", parse_overrides(["prior.guidance_scale=2"]))["prior"]["guidance_scale"] == 2
    (tmp_path / "mine.yaml").write_text("extends: tiny\ndvae: null\n")
    with pytest.raises(ConfigError, match="dvae: null would drop"):
        load_preset(str(tmp_path / "mine.yaml"))


def test_bad_preset_files_are_named(tmp_path):
    bad = {"flow.yaml": ("train: [1, 2\n", "is not valid YAML"),
           "list.yaml": ("- tiny\n- laptop\n", "expected a mapping of sections"),
           "loop.yaml": ("extends: loop\n", "extends itself")}
    for name, (text, message) in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=message) as e:
            load_preset(str(tmp_path / name))
        assert name in str(e.value)
    (tmp_path / "a.yaml").write_text("extends: b\n")
    (tmp_path / "b.yaml").write_text("extends: a\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_preset(str(tmp_path / "a.yaml"))
