"""The package's layers (.importlinter, docs/development.md "Layers"): the contract holds on
today's sources, has teeth against a planted import, and covers every folder of the package."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from setuptools import find_packages

from helpers import REPO

PACKAGE = REPO / "fairseq_hashee"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def source_folders():
    return sorted({path.parent for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts})


def test_every_source_folder_is_an_installed_package():
    """A folder without __init__.py is a namespace package: find_packages leaves it out of an
    install and import-linter does not see it (fairseq_hashee/tables/ was one)."""
    installed = set(find_packages(str(REPO), include=["fairseq_hashee", "fairseq_hashee.*"]))
    for folder in source_folders():
        assert ".".join(folder.relative_to(REPO).parts) in installed, f"{folder} has no __init__.py"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """lint-imports on the package copy under ``root``, with the repository's contract."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "module, planted, broken",
    [
        # a core module reaching into a command line: both contracts
        ("exits/rules.py", "from ..cli import rouge", "fairseq_hashee.exits is not allowed to import"),
        # the core reaching into a tooling library, indirectly for fairseq's --user-dir import
        ("models/truncation.py", "from ..compare import runs", "fairseq_hashee is not allowed to import"),
        # a tooling library reaching into a command line (calibration once imported cli/rouge.py)
        ("calibration/losses.py", "from ..cli import rouge", "fairseq_hashee.calibration is not allowed to import"),
        # the package's own __init__, which only the --user-dir contract checks
        ("__init__.py", "from .rouge import rouge", "fairseq_hashee is not allowed to import fairseq_hashee.rouge"),
    ],
)
def test_the_import_contract_refuses_a_planted_import(tmp_path, module, planted, broken):
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS}: missing; import-linter is in the test extra (pip install -e '.[test]')")
    shutil.copy(REPO / ".importlinter", tmp_path)
    shutil.copytree(PACKAGE, tmp_path / "fairseq_hashee", ignore=shutil.ignore_patterns("__pycache__"))
    clean = lint_imports(tmp_path)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    with open(tmp_path / "fairseq_hashee" / module, "a", encoding="utf-8") as source:
        source.write(f"\n{planted}  # noqa\n")
    planted_run = lint_imports(tmp_path)
    assert planted_run.returncode == 1, planted_run.stdout + planted_run.stderr
    assert broken in planted_run.stdout
