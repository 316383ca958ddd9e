from dataclasses import dataclass

import pytest

from speechkd.config import ConfigError, apply_overrides, field, from_dict, load_yaml, save_yaml, to_dict


@dataclass
class Inner:
    rate: float = field(1.0, help="a rate")


@dataclass
class Outer:
    name: str = field("x", help="a name")
    n: int = field(3, help="a count")
    flag: bool = field(False, help="a flag")
    tags: list[str] = field(default_factory=list, help="tags")
    inner: Inner = field(default_factory=Inner, help="nested")
    maybe: float | None = field(None, help="optional")


def test_unknown_key_names_source_and_key():
    with pytest.raises(ConfigError, match=r"recipe.yaml: stages.x: unknown key\(s\) 'nn'"):
        from_dict(Outer, {"nn": 1}, where="recipe.yaml: stages.x")


def test_nested_unknown_key_has_dotted_path():
    with pytest.raises(ConfigError, match=r"cfg.inner: unknown key\(s\) 'rat'"):
        from_dict(Outer, {"inner": {"rat": 2}}, where="cfg")


@pytest.mark.parametrize("data, msg", [({"n": "three"}, "expected an integer"), ({"flag": "yes"}, "true/false"),
                                       ({"tags": "a"}, "expected a list"), ({"inner": 3}, "expected a mapping")])
def test_type_errors(data, msg):
    with pytest.raises(ConfigError, match=msg):
        from_dict(Outer, data)


def test_coercion_and_round_trip(tmp_path):
    cfg = from_dict(Outer, {"n": 5, "inner": {"rate": 2}, "maybe": 1, "tags": ["a"]})
    assert cfg.inner.rate == 2.0 and isinstance(cfg.inner.rate, float) and cfg.maybe == 1.0
    save_yaml(to_dict(cfg), tmp_path / "c.yaml")
    assert from_dict(Outer, load_yaml(tmp_path / "c.yaml")) == cfg


def test_dotted_overrides_parse_yaml_values():
    out = apply_overrides({"a": {"b": 1}}, ["a.b=2", "a.c=[1, 2]", "d.e=true", "s=hello"])
    assert out == {"a": {"b": 2, "c": [1, 2]}, "d": {"e": True}, "s": "hello"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["novalue"])


def test_bad_yaml_names_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: the YAML file is not valid YAML at line 2, column 1"):
        load_yaml(p)


def test_qat_config_keeps_its_fine_tune_defaults_and_refuses_a_model_block():
    """A nested block given in part keeps the field's own defaults (qat: lr 3e-4, no warm-up), and a qat stage
    takes its architecture from the init model, so a model block is an error, not silently ignored."""
    from speechkd.config import ConfigError, from_dict
    from speechkd.stages.qat import Config

    c = from_dict(Config, {"optim": {"lr": 1e-4}})
    assert c.optim.lr == 1e-4 and c.optim.warmup_steps == 0
    assert from_dict(Config, {}).optim.lr == 3e-4
    with pytest.raises(ConfigError, match="model: a qat stage takes the architecture of its init model"):
        from_dict(Config, {"model": {"hidden": 64}}, where="recipe.yaml: stages.q")
