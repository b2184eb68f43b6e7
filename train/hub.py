"""Uploading the published model folder to a Hugging Face Hub (``dapt publish --repo-id ORG/NAME``).

The folder is the publish stage's ``model/`` (the exported weights and the report's model card as
``README.md``), optionally with the report itself under ``dapt-report/``. Everything goes through
``huggingface_hub`` (``HfApi.create_repo``, ``upload_folder``): the endpoint can be a private Hub
(``--endpoint``, or ``HF_ENDPOINT``), the token comes from ``HF_TOKEN`` or the user's login, as with
every Hub tool. A dry run lists what would be uploaded and checks the card without any network call.

The card check is offline: ``huggingface_hub.ModelCard`` parses the YAML header (its ``model-index``
into evaluation results), and the fields the Hub filters on must be there. The Hub's own validation
endpoint needs the network and is not called.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dapt.pipeline.errors import ConfigError, InputError

REPORT_DIR = "dapt-report"
REPORT_FILES = ("report.html", "report.md")
CARD_FIELDS = ("library_name", "pipeline_tag", "tags")
"""Metadata every dapt card carries (the Hub filters on them); ``license``, ``base_model`` and the
``model-index`` results are checked when the card has them."""


@dataclass(frozen=True)
class HubTarget:
    """Where and how to upload (the CLI's ``--repo-id``, ``--private``, ``--endpoint``, ``--dry-run``,
    ``--with-report``)."""

    repo_id: str
    private: bool = False
    endpoint: str | None = None
    dry_run: bool = False
    with_report: bool = False

    def __post_init__(self) -> None:
        parts = self.repo_id.split("/")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"--repo-id {self.repo_id!r}: expected ORG/NAME (or USER/NAME)")


def check_card(card_path: Path) -> dict[str, Any]:
    """Parse the model card as the Hub does and check its metadata; InputError naming the file and
    the problem. Returns what was checked."""
    from huggingface_hub import ModelCard

    try:
        card = ModelCard.load(card_path)
    except Exception as e:  # noqa: BLE001 - a malformed header or model-index, in the library's words
        raise InputError(f"{card_path}: the model card does not parse: {e}") from None
    data = card.data.to_dict()
    missing = [k for k in CARD_FIELDS if not data.get(k)]
    if missing:
        raise InputError(f"{card_path}: the model card's metadata lacks {', '.join(missing)}")
    results = card.data.eval_results or []
    return {
        "license": data.get("license"),
        "base_model": data.get("base_model"),
        "pipeline_tag": data.get("pipeline_tag"),
        "eval_results": len(results),
    }


def upload_plan(model_dir: Path, report_dir: Path | None, target: HubTarget) -> list[dict[str, Any]]:
    """Every file that would go up: path in the repo, local path, bytes."""
    files = [
        {"path": p.relative_to(model_dir).as_posix(), "local": str(p), "bytes": p.stat().st_size}
        for p in sorted(model_dir.rglob("*"))
        if p.is_file()
    ]
    if target.with_report and report_dir is not None:
        for name in REPORT_FILES:
            p = report_dir / name
            if p.is_file():
                files.append({"path": f"{REPORT_DIR}/{name}", "local": str(p), "bytes": p.stat().st_size})
    return files


def upload(model_dir: Path, report_dir: Path | None, target: HubTarget, message: str) -> dict[str, Any]:
    """Check the card, then (unless a dry run) create the repo if needed and upload the folder in one
    commit. Returns the record the publish manifest keeps."""
    card = check_card(model_dir / "README.md")
    files = upload_plan(model_dir, report_dir, target)
    record: dict[str, Any] = {
        "repo_id": target.repo_id,
        "private": target.private,
        "endpoint": target.endpoint,
        "dry_run": target.dry_run,
        "card": card,
        "files": [{k: f[k] for k in ("path", "bytes")} for f in files],
        "bytes": sum(f["bytes"] for f in files),
    }
    if target.dry_run:
        return record
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=target.endpoint)
    try:
        url = api.create_repo(target.repo_id, private=target.private, exist_ok=True, repo_type="model")
        info = api.create_commit(
            target.repo_id,
            operations=[CommitOperationAdd(f["path"], f["local"]) for f in files],
            commit_message=message,
            repo_type="model",
        )
    except Exception as e:  # noqa: BLE001 - network, auth or permission: one line, nothing half-recorded
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(
            f"upload to {target.repo_id} ({target.endpoint or 'huggingface.co'}) failed: {first}"
        ) from None
    record.update(repo_url=str(url), commit_url=info.commit_url, commit=info.oid)
    return record
