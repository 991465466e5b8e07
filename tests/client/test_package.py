"""The client is a package of its own: ``pip install ./clients/python`` into a fresh virtual
environment brings httpx and its few dependencies, never the console's server, and the client
works there without Django."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import venv
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CLIENT = REPO_ROOT / "clients" / "python"

# httpx 0.27-0.28 and what it needs on Python 3.11.
HTTPX_AND_ITS_DEPENDENCIES = {
    "httpx",
    "httpcore",
    "h11",
    "anyio",
    "idna",
    "certifi",
    "sniffio",
    "typing-extensions",
}
# What a fresh virtual environment starts with.
BOOTSTRAP = {"pip", "setuptools", "wheel"}


def site_packages_bytes(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


def test_installing_the_client_pulls_only_httpx_and_its_dependencies(tmp_path):
    environment = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=True).create(environment)
    python = environment / "bin" / "python"
    site = next((environment / "lib").glob("python3*/site-packages"))
    before = site_packages_bytes(site)
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DJANGO_SETTINGS_MODULE", "PYTHONPATH", "VIRTUAL_ENV"}
    }

    # Built from a copy: the build writes into its source folder, and must not read stale files.
    source = tmp_path / "client"
    shutil.copytree(
        CLIENT, source, ignore=shutil.ignore_patterns(".venv", "build", "*.egg-info", "__pycache__")
    )
    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source)],
        env=clean,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr

    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    installed = {package["name"].lower().replace("_", "-") for package in json.loads(listed.stdout)}
    added = installed - BOOTSTRAP - {"agent-ops-console-client"}
    assert "agent-ops-console-client" in installed
    assert "httpx" in added
    assert added <= HTTPX_AND_ITS_DEPENDENCIES, (
        f"more than httpx: {added - HTTPX_AND_ITS_DEPENDENCIES}"
    )

    code = (
        "import sys, opsconsole_client as c; "
        "assert not issubclass(c.Stop, Exception); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'django', 'agents', 'opsconsole'}))"
    )
    imported = subprocess.run(
        [python, "-c", code],
        cwd=tmp_path,  # not the repository: the installed package, not the source tree
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == "[]"
    typed = list(site.glob("opsconsole_client/py.typed"))
    assert typed, "the installed package carries py.typed"

    added_megabytes = (site_packages_bytes(site) - before) / 1e6
    print(f"\nthe client and its dependencies add {added_megabytes:.1f} MB: {sorted(added)}")
    assert added_megabytes < 10
