"""What a manifest records about the code that wrote it: library versions and the git revision."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path


def library_versions() -> dict[str, str]:
    out = {}
    for dist in [
        "dapt-pipeline",
        "torch",
        "transformers",
        "tokenizers",
        "sentencepiece",
        "ray",
        "lm_eval",
        "pyarrow",
        "numpy",
        "datasets",
    ]:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    out["python"] = sys.version.split()[0]
    return out


def git_revision() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None
