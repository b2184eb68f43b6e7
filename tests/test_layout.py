"""The architecture as docs/architecture.md draws it, checked on the source (AST, no imports run).

- The frame (``pipeline/``) imports no stage package; the one exception is the composition root,
  ``pipeline/config.py``, which imports each stage's *config section* module (``<stage>.config``,
  pydantic only) to assemble the run config.
- No module imports a private name (``_x``) or a private module of another stage package.
- Every package folder is installed (listed in pyproject's ``packages``), so a wheel is complete.
- A source file over ~500 lines says at its top why it stays whole ("Kept whole:").
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
"""``{"dapt.pipeline": "pipeline", ...}``: the installed name of each top-level folder."""
LONG_FILE_LINES = 520
LONG_FILE_MARK = "Kept whole:"


def _modules() -> list[tuple[str, Path]]:
    out = []
    for dotted, folder in PACKAGE_DIR.items():
        for f in sorted((ROOT / folder).rglob("*.py")):
            rel = f.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out.append((".".join([dotted, *parts]), f))
    return out


MODULES = _modules()


def stage_package(module: str) -> str:
    """The stage a module belongs to: ``dapt.corpora.<stage>`` for the corpora stages (clean, split,
    mix, recipes), ``dapt.eval.report`` for the report, else the top-level package."""
    parts = module.split(".")
    if parts[1] == "corpora" and len(parts) > 2:
        return ".".join(parts[:3])
    if parts[:3] == ["dapt", "eval", "report"]:
        return "dapt.eval.report"
    return ".".join(parts[:2])


def _imports(path: Path, module: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names, line) for every import in the file, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".")[: -node.level if path.name != "__init__.py" else None]
                if path.name == "__init__.py" and node.level > 1:
                    pkg = pkg[: -(node.level - 1)]
                base = ".".join([*pkg, base]) if base else ".".join(pkg)
            out.append((base, [a.name for a in node.names], node.lineno))
    return out


def test_the_frame_imports_no_stage():
    bad = []
    for module, path in MODULES:
        if not module.startswith("dapt.pipeline"):
            continue
        for imported, _names, line in _imports(path, module):
            if not imported.startswith("dapt.") or imported.startswith("dapt.pipeline"):
                continue
            if module == "dapt.pipeline.config" and imported.endswith(".config"):
                continue  # the composition root: each stage's config section, pydantic only
            bad.append(f"{path.relative_to(ROOT)}:{line} imports {imported}")
    assert not bad, "the frame must not depend on a stage:\n" + "\n".join(bad)


def test_stage_config_modules_are_leaves():
    """What the frame may import from a stage (its config section) imports no stage code itself (the
    frame's leaves ``knobs`` and ``errors``, declarations and exception classes, are fine)."""
    bad = []
    for module, path in MODULES:
        if not module.endswith(".config") or module.startswith("dapt.pipeline"):
            continue
        for imported, _names, line in _imports(path, module):
            if imported.startswith("dapt.") and not (
                imported.startswith(("dapt.pipeline.knobs", "dapt.pipeline.errors"))
                or imported.endswith(".config")
            ):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {imported}")
    assert not bad, "\n".join(bad)


def test_no_stage_imports_another_stages_internals():
    bad = []
    for module, path in MODULES:
        own = stage_package(module)
        for imported, names, line in _imports(path, module):
            if not imported.startswith("dapt.") or imported.startswith("dapt.pipeline"):
                continue
            if stage_package(imported) == own:
                continue
            private_module = any(p.startswith("_") and p != "__init__" for p in imported.split("."))
            private_names = [n for n in names if n.startswith("_")]
            if private_module or private_names:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {imported} {private_names}")
    assert not bad, "a stage may use another stage's public API only:\n" + "\n".join(bad)


def test_every_package_folder_is_installed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = set()
    for module, path in MODULES:
        if path.name == "__init__.py" or path.parent.name != "__pycache__":
            pkg = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
            folders.add(pkg)
    missing = sorted(folders - listed)
    assert not missing, f"package folders missing from pyproject [tool.setuptools] packages: {missing}"


@pytest.mark.parametrize("folder", [*PACKAGE_DIR.values(), "bench", "tests"])
def test_long_files_say_why(folder):
    long = []
    for f in sorted((ROOT / folder).rglob("*.py")):
        text = f.read_text(encoding="utf-8")
        if text.count("\n") > LONG_FILE_LINES and LONG_FILE_MARK not in "\n".join(text.splitlines()[:40]):
            long.append(f"{f.relative_to(ROOT)} ({text.count(chr(10))} lines)")
    assert not long, f"split these by responsibility, or say at the top why not ({LONG_FILE_MARK!r}): {long}"


def test_restricted_config_view_and_declared_upstreams(tmp_path):
    """A stage sees only the config sections it declares, and reads only the stages it needs."""
    from dapt.pipeline.config import load_config
    from dapt.pipeline.stages import STAGES, StageConfig, StageContext

    (tmp_path / "a.jsonl").write_text('{"text": "a"}\n')
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(
        f"name: t\nrun_dir: {tmp_path / 'run'}\nsources:\n"
        f"  - {{name: a, kind: domain, paths: [{tmp_path / 'a.jsonl'}]}}\nmodel: {{from_config: {{}}}}\n"
    )
    cfg = load_config(cfg_path)
    view = StageConfig(cfg, STAGES["mix"])
    assert view.mix.seq_len == cfg.mix.seq_len and view.sources_of("domain")[0].name == "a"
    with pytest.raises(AttributeError, match="does not declare"):
        _ = view.train
    ctx = StageContext(view, STAGES["mix"], tmp_path, tmp_path, None, run_config=cfg)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="does not list in `needs`"):
        ctx.upstream_manifest("train")
