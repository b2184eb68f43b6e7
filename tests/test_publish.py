"""The publish stage: the final model folder assembled from the train export and the report's card."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def _finished_run(
    tmp_path: Path, card: str = "---\nlicense: apache-2.0\n---\n# The card\n"
) -> tuple[Path, Path]:
    """A run folder with finished train (an export with a stale README) and report (the card) stages;
    returns (run folder, config file)."""
    import yaml

    run = tmp_path / "run"
    model = run / "train" / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "llama"}')
    (model / "model.safetensors").write_bytes(b"\0" * 4096)
    (model / "sub" / "extra.txt").write_text("x")
    (model / "README.md").write_text("stale card from some export\n")
    (run / "report").mkdir(parents=True)
    (run / "report" / "model_card.md").write_text(card)
    (run / "report" / "report.html").write_text("<html>report</html>")
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
    return run, cfg_file


def test_publish_links_the_export_and_ships_the_report_card(tmp_path: Path) -> None:
    """publish/model/ = train's exported files (hard-linked, not copied) + the report's model card as
    README.md; neither upstream folder is touched."""
    from dapt.pipeline.config import load_config
    from dapt.pipeline.errors import InputError
    from dapt.pipeline.stages import run_stage

    run, cfg_file = _finished_run(tmp_path)
    model = run / "train" / "model"
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


CARD = """---
license: apache-2.0
library_name: transformers
pipeline_tag: fill-mask
tags: [dapt, domain-adaptation]
model-index:
- name: m
  results:
  - task: {type: fill-mask, name: bits-per-byte}
    dataset: {type: fin, name: held-out fin}
    metrics:
    - {type: bits_per_byte, value: 2.1, name: bpb fin}
---
# m
"""


def _dapt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dapt.pipeline.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_publish_to_the_hub_dry_run_lists_files_and_checks_the_card(tmp_path: Path) -> None:
    """`dapt publish --repo-id ORG/NAME --dry-run --with-report`: the files that would go up (the model
    folder and the report), the card parsed by huggingface_hub.ModelCard with its evaluation results;
    nothing is uploaded and the manifest records the plan."""
    run, cfg = _finished_run(tmp_path, CARD)
    proc = _dapt("publish", "--config", str(cfg), "--repo-id", "acme/fin-bert", "--dry-run", "--with-report")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "would upload 5 files" in out and "acme/fin-bert" in out
    for path in ("README.md", "config.json", "model.safetensors", "sub/extra.txt", "dapt-report/report.html"):
        assert f"  {path}  " in out
    assert "model card: ok (1 evaluation results, license apache-2.0)" in out
    hub = json.loads((run / "publish" / "manifest.json").read_text())["hub"]
    assert hub["dry_run"] and hub["repo_id"] == "acme/fin-bert" and "commit_url" not in hub


@pytest.mark.parametrize(
    ("card", "repo", "endpoint", "message"),
    [
        (
            "---\nlicense: apache-2.0\n---\n# no metadata\n",
            "acme/m",
            None,
            "lacks library_name, pipeline_tag, tags",
        ),
        (CARD, "no-slash", None, "--repo-id 'no-slash': expected ORG/NAME"),
        (CARD, "acme/m", "http://127.0.0.1:9", "upload to acme/m (http://127.0.0.1:9) failed"),
    ],
)
def test_publish_to_the_hub_fails_in_one_line(tmp_path: Path, card, repo, endpoint, message) -> None:
    """A card without the Hub's metadata, a malformed repo id, an unreachable Hub (a closed port on
    loopback: the only network these tests touch): one line naming the problem, a non-zero exit, and
    no publish stage marked done."""
    run, cfg = _finished_run(tmp_path, card)
    args = ["publish", "--config", str(cfg), "--repo-id", repo]
    proc = _dapt(*args, *(["--endpoint", endpoint] if endpoint else []))
    assert proc.returncode != 0
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("dapt: error:")]
    assert len(err) == 1 and message in err[0], proc.stderr[-2000:]
    assert not (run / "publish" / "_DONE").exists()
