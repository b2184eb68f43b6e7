"""The publish stage: the final model folder assembled from the train export and the report's card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_publish_links_the_export_and_ships_the_report_card(tmp_path: Path) -> None:
    """publish/model/ = train's exported files (hard-linked, not copied) + the report's model card as
    README.md; neither upstream folder is touched."""
    import yaml

    from dapt.pipeline.config import load_config
    from dapt.pipeline.errors import InputError
    from dapt.pipeline.stages import run_stage

    run = tmp_path / "run"
    model = run / "train" / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "llama"}')
    (model / "model.safetensors").write_bytes(b"\0" * 4096)
    (model / "sub" / "extra.txt").write_text("x")
    (model / "README.md").write_text("stale card from some export\n")
    (run / "report").mkdir(parents=True)
    (run / "report" / "model_card.md").write_text("---\nlicense: apache-2.0\n---\n# The card\n")
    for stage, outputs in (("train", {"model": "model"}), ("report", {"model_card": "model_card.md"})):
        (run / stage / "manifest.json").write_text(
            json.dumps({"fingerprint": f"fp-{stage}", "outputs": outputs})
        )
        (run / stage / "_DONE").write_text(f"fp-{stage}\n")
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(
        yaml.safe_dump(
            {
                "name": "p",
                "run_dir": str(run),
                "sources": [{"name": "fin", "kind": "domain", "paths": [str(tmp_path / "fin.jsonl")]}],
                "model": {"name_or_path": "org/model"},
            }
        )
    )
    cfg = load_config(cfg_file)
    man = run_stage(cfg, "publish", echo=None)

    out = run / "publish" / "model"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "sub/extra.txt",
    ]
    assert (out / "README.md").read_text() == (run / "report" / "model_card.md").read_text()
    assert (out / "model.safetensors").stat().st_ino == (model / "model.safetensors").stat().st_ino
    assert (model / "README.md").read_text() == "stale card from some export\n"  # train's folder untouched
    assert man["outputs"] == {"model": "model"} and man["counts"]["files"] == 4
    assert len(man["model_card_sha256"]) == 64

    (run / "report" / "model_card.md").unlink()
    with pytest.raises(InputError, match="model_card"):
        run_stage(cfg, "publish", echo=None, force=True)
