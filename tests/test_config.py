"""Reading a run config (t3s.config) on its own: files and overrides, bare keys, types and bounds, the errors a
user sees (naming the file and the key), and the round trip through the config.yaml a run writes."""

import dataclasses

import pytest
import yaml

from t3s import T3SError
from t3s.config import SECTIONS, RunConfig, load_config, read_resolved


def write(tmp_path, body):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(body) if isinstance(body, dict) else body)
    return path


def test_file_then_overrides_and_bare_keys_go_to_the_first_section_that_has_them(tmp_path):
    path = write(tmp_path, {"student": "s", "modes": ["sft"], "train": {"learning_rate": 1e-5, "max_steps": 50}})
    cfg = load_config(path, ["max_steps=7", "probe.eval_every=3", "modes=[sft,t3s]", "chat_template=off"])
    assert cfg.train.learning_rate == 1e-5 and cfg.train.max_steps == 7 and cfg.probe.eval_every == 3
    assert cfg.modes == ["sft", "t3s"] and cfg.render.chat_template == "off" and cfg.student == "s"
    assert isinstance(cfg.train.learning_rate, float)
    assert load_config(None, ["learning_rate=3e-3"]).train.learning_rate == 3e-3  # "3e-3" is read as a number


@pytest.mark.parametrize(
    "body, override, message",
    [
        ({"train": {"lr": 1}}, None, r"run.yaml \[train\]: unknown key\(s\) lr"),
        ({"trian": {}}, None, r"run.yaml: unknown key\(s\) trian"),
        ({"train": {"max_steps": 2.5}}, None, r"bad value for 'max_steps': 2.5 \(expected an integer\)"),
        ({"train": {"learning_rate": "fast"}}, None, r"bad value for 'learning_rate'"),
        ({"train": {"logging_steps": 0}}, None, r"run.yaml: train.logging_steps must be >= 1, got 0"),
        ({"train": [1]}, None, r"section 'train' must be a mapping"),
        ({}, "lr=1", r"unknown config key 'lr'"),
        ({}, "nokey", r"override 'nokey' is not key=value"),
        ({"modes": ["sft", "tss"]}, None, r"modes must be a non-empty list of .*got \['sft', 'tss'\]"),
        ({"seeds": []}, None, r"seeds must list at least one seed"),
        ({"modes": ["t3s-step"]}, None, r"t3s-step needs delta_step"),
        ("a: [1, 2", None, r"run.yaml: cannot read config"),
        ("- 1\n- 2\n", None, r"run.yaml: a config must be a mapping"),
    ],
)
def test_bad_configs_are_one_clear_error(tmp_path, body, override, message):
    path = write(tmp_path, body)
    with pytest.raises(T3SError, match=message):
        load_config(path, [override] if override else [])


def test_none_is_the_old_name_of_sft():
    assert RunConfig(modes=["none", "t3s"]).modes == ["sft", "t3s"]


def test_the_config_a_run_writes_reads_back_to_the_same_config(tmp_path):
    cfg = load_config(
        write(tmp_path, {"student": "s", "train_data": "d", "threshold": "auto", "train": {"learning_rate": 1}}),
        ["delta_step=4", "modes=[sft,t3s-step]", "eval.max_new_tokens=16"],
    )
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg.as_dict(), sort_keys=False))
    back = read_resolved(tmp_path / "config.yaml")
    assert back == cfg and type(back.train.learning_rate) is type(cfg.train.learning_rate)
    assert set(cfg.as_dict()) == {f.name for f in dataclasses.fields(RunConfig)}
    assert all(isinstance(getattr(cfg, name), cls) for name, cls in SECTIONS.items())
    with pytest.raises(T3SError, match="not a config written by `t3s run`"):
        (tmp_path / "other.yaml").write_text("train: {lr: 1}\n")
        read_resolved(tmp_path / "other.yaml")


def test_override_values_are_yaml_scalars_or_flow_collections_else_the_text_as_written():
    """A prompt on the command line ("Final answer: \\boxed{N}") is a string, not a YAML mapping or a traceback;
    numbers, booleans and flow collections are still read as YAML; a broken collection is one clear error."""
    from t3s.config import parse_override
    from t3s.traces import load_traces_config

    text = "Reason step by step, then end with: Final answer: \\boxed{N}."
    assert parse_override(text) == text
    assert parse_override("a: b") == "a: b" and parse_override("- a") == "- a"
    assert parse_override("1e-5") == 1e-5 and parse_override("true") is True and parse_override("3") == 3
    assert parse_override("[sft, t3s]") == ["sft", "t3s"] and parse_override("{top_k: 20}") == {"top_k": 20}
    with pytest.raises(T3SError, match="YAML list or mapping"):
        parse_override("{top_k: 20")
    _, rcfg = load_traces_config(None, [f"system_prompt={text}"])
    assert rcfg.system_prompt == text
    cfg = load_config(None, [f"render.system_prompt={text}"])
    assert cfg.render.system_prompt == text
