"""Debian package helpers: which packages are installed (and at what version), and installing missing ones.

The demo corpora are built from files that Debian packages install, so a recipe records each package's
version in every document's provenance: the same versions give byte-identical corpora.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterable

from dapt.pipeline.errors import InputError


def installed_version(package: str) -> str | None:
    """The installed version of ``package``, or None (not installed, or no dpkg on this system)."""
    if not shutil.which("dpkg-query"):
        return None
    r = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}\t${Version}", package], capture_output=True, text=True, check=False
    )
    if r.returncode != 0:
        return None
    status, _, version = r.stdout.partition("\t")
    return version.strip() if status.strip().endswith(" installed") else None


def missing_packages(packages: Iterable[str]) -> list[str]:
    return [p for p in dict.fromkeys(packages) if installed_version(p) is None]


def install_command(packages: list[str]) -> list[str]:
    return ["apt-get", "install", "-y", "--no-install-recommends", *packages]


def ensure_packages(packages: Iterable[str], log: Callable[[str], None] = print) -> None:
    """Install the missing ``packages`` with apt-get, or raise InputError saying how to do it by hand.

    Runs ``apt-get update`` once when the first install cannot find a package (a fresh container has
    empty package lists). Never prompts: ``DEBIAN_FRONTEND=noninteractive``.
    """
    missing = missing_packages(packages)
    if not missing:
        return
    manual = "sudo apt-get update && sudo " + " ".join(install_command(missing))
    if not shutil.which("apt-get") or not shutil.which("dpkg-query"):
        raise InputError(
            f"missing Debian packages {missing} and no apt-get here: install their equivalents and rerun "
            f"(or pass --no-install to build only the sources whose packages are present)"
        )
    if os.geteuid() != 0:
        raise InputError(
            f"missing Debian packages {missing}; not root, so not installing them. Run: {manual} "
            f"(or pass --no-install to build only the sources whose packages are present)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log(f"installing Debian packages: {' '.join(missing)}")
    r = subprocess.run(install_command(missing), capture_output=True, text=True, env=env, check=False)
    if r.returncode != 0:
        log("apt-get install failed; running apt-get update and retrying")
        subprocess.run(["apt-get", "update"], capture_output=True, text=True, env=env, check=False)
        r = subprocess.run(install_command(missing), capture_output=True, text=True, env=env, check=False)
    still = missing_packages(missing)
    if r.returncode != 0 or still:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        raise InputError(f"could not install Debian packages {still or missing}: {' | '.join(tail)}")
