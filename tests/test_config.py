"""Run config: validation errors name the file and dotted key; overrides; nothing written on error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dapt.pipeline.config import load_config, parse_overrides
from dapt.pipeline.errors import ConfigError

BASE = """\
name: t
run_dir: {run_dir}
sources:
  - name: fin
    kind: domain
    paths: ["{data}/fin.jsonl"]
  - name: gen
    kind: general
    paths: ["{data}/gen.jsonl.gz"]
model:
  from_config: {{hidden_size: 32}}
"""


@pytest.fixture
def cfg_file(tmp_path: Path) -> Path:
    import gzip

    (tmp_path / "fin.jsonl").write_text('{"text": "x"}\n')
    with gzip.open(tmp_path / "gen.jsonl.gz", "wt") as f:
        f.write('{"text": "y"}\n')
    p = tmp_path / "run.yaml"
    p.write_text(BASE.format(run_dir=tmp_path / "run", data=tmp_path))
    return p


def test_valid_config_infers_formats_and_defaults(cfg_file: Path) -> None:
    cfg = load_config(cfg_file, check_inputs=True)
    assert [s.format for s in cfg.sources] == ["jsonl", "jsonl"]
    assert cfg.sources[0].text_field == "text"
    assert cfg.model.from_config.hidden_size == 32
    assert cfg.run_path == cfg_file.parent / "run"


def _err(cfg_file: Path, overrides: list[str] | None = None, check: bool = False) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(cfg_file, overrides, check_inputs=check)
    assert e.value.exit_code == 2
    msg = str(e.value)
    assert "\n" not in msg, "errors are one line"
    assert str(cfg_file) in msg
    return msg


def test_unknown_key(cfg_file: Path) -> None:
    assert "bogus.key: unknown key" in _err(cfg_file, ["bogus.key=1"])
    assert "model.from_config.hiden_size: unknown key" in _err(cfg_file, ["model.from_config.hiden_size=3"])


def test_wrong_type_and_range(cfg_file: Path) -> None:
    assert "model.from_config.hidden_size" in _err(cfg_file, ["model.from_config.hidden_size=abc"])
    assert "model.from_config.num_hidden_layers" in _err(cfg_file, ["model.from_config.num_hidden_layers=0"])
    assert "sources.0.kind" in _err(cfg_file, ["sources.0.kind=finance"])
    assert "ray.object_store_memory_gb" in _err(cfg_file, ["ray.object_store_memory_gb=-1"])


def test_missing_key_and_bad_yaml(tmp_path: Path, cfg_file: Path) -> None:
    p = tmp_path / "nomodel.yaml"
    p.write_text("name: t\nsources: [{name: a, kind: domain, paths: [x.jsonl]}]\n")
    assert "model: required key is missing" in _err(p)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\nsources: [\n  - oops: : :\n")
    msg = _err(bad)
    assert "invalid YAML" in msg and "line" in msg


def test_missing_input_file(cfg_file: Path, tmp_path: Path) -> None:
    (tmp_path / "fin.jsonl").unlink()
    msg = _err(cfg_file, check=True)
    assert "sources.0.paths.0" in msg and "fin.jsonl" in msg
    load_config(cfg_file)  # without input checks (plan, status) it loads


def test_format_not_inferable(cfg_file: Path) -> None:
    assert "sources.0" in _err(cfg_file, ["sources.0.paths=[a.csv]"])


def test_overrides_parse_yaml_values(cfg_file: Path) -> None:
    cfg = load_config(cfg_file, ["model.from_config.hidden_size=48", "name=other", "sources.1.weight=0.5"])
    assert cfg.model.from_config.hidden_size == 48 and cfg.name == "other" and cfg.sources[1].weight == 0.5
    assert parse_overrides(["a.b=[1, 2]", "c=true", "d="]) == [("a.b", [1, 2]), ("c", True), ("d", "")]
    with pytest.raises(ConfigError, match="not of the form"):
        parse_overrides(["novalue"])
    assert "sources.7" in _err(cfg_file, ["sources.7.name=x"])


def test_cli_unknown_key_exits_2_and_writes_nothing(cfg_file: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dapt.pipeline.cli", "clean", "--config", str(cfg_file), "bogus.key=1"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "bogus.key" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_help_lists_every_stage() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dapt.pipeline.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for cmd in ["clean", "tokenizer", "mix", "train", "eval", "report", "run", "status", "submit", "plan"]:
        assert cmd in out


@pytest.mark.parametrize("path", sorted(Path("configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path: Path) -> None:
    load_config(path)
