"""The ``publish`` stage: the model folder a user ships, assembled from finished stages it does not touch.

Each stage owns its folder: train exports the weights into ``train/model/``, the report writes
``model_card.md`` into ``report/``. Publishing puts them together in ``publish/model/``: the exported
files hard-linked (no second copy of the weights; copied across file systems) and the model card as
``README.md``, where the Hugging Face Hub reads it. A rerun of train or report makes this stage stale
through their fingerprints, so the published folder never mixes an old card with new weights.

With ``dapt publish --repo-id ORG/NAME`` the stage also uploads the folder to a Hugging Face Hub
(train/hub.py; ``--dry-run`` lists the files and checks the card only) and records where in its
manifest (``hub``).
"""

from __future__ import annotations

from typing import Any

from dapt.pipeline.errors import InputError
from dapt.pipeline.fsutil import link_or_copy, sha256_file
from dapt.pipeline.stages import StageContext

MODEL_DIR = "model"
CARD = "README.md"


def run(ctx: StageContext) -> dict[str, Any]:
    model = ctx.upstream_output("train", "model")
    card = ctx.upstream_output("report", "model_card")
    if model is None or not model.is_dir():
        raise InputError(
            f"{ctx.upstream_dir('train')}/manifest.json: outputs.model is not a folder ({model})"
        )
    if card is None or not card.is_file():
        raise InputError(
            f"{ctx.upstream_dir('report')}/manifest.json: outputs.model_card is not a file ({card})"
        )
    dest = ctx.out_dir / MODEL_DIR
    dest.mkdir(parents=True, exist_ok=True)
    files = []
    for src in sorted(p for p in model.rglob("*") if p.is_file()):
        rel = src.relative_to(model)
        if rel.as_posix() == CARD:
            continue  # the report's card replaces any README the export carried
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(src, dest / rel)
        files.append({"path": rel.as_posix(), "bytes": src.stat().st_size})
    (dest / CARD).write_bytes(card.read_bytes())
    ctx.log.info("published %d model files and the model card into %s", len(files), dest)
    hub = None
    if ctx.extra.get("hub"):  # `dapt publish --repo-id ORG/NAME`: upload what was just assembled
        from dapt.train.hub import HubTarget, upload

        target = HubTarget(**ctx.extra["hub"])
        message = f"dapt run {ctx.cfg.name}: model and card (train {ctx.upstream_manifest('train').get('fingerprint', '')[:12]})"
        hub = upload(dest, card.parent, target, message)
        ctx.log.info("hub: %s", {k: v for k, v in hub.items() if k != "files"})
    return {
        "hub": hub,
        "outputs": {"model": MODEL_DIR},
        "files": files,
        "model_card_sha256": sha256_file(dest / CARD),
        "counts": {
            "files": len(files) + 1,
            "bytes": sum(f["bytes"] for f in files) + (dest / CARD).stat().st_size,
        },
    }
