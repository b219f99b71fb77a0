"""The layer contracts of pyproject.toml ([tool.importlinter]) hold: a broken one fails here with
import-linter's report (which import, through which chain), not only in `make lint`."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The venv's own script: the one installed with the test extras, whatever PATH says.
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def test_contracts_are_configured():
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert {c["type"] for c in contracts} >= {"layers", "forbidden", "protected", "acyclic_siblings"}


def test_import_contracts_hold():
    assert LINT_IMPORTS.exists(), f"{LINT_IMPORTS} missing: install the test extras (pip install -e '.[test]')"
    # --no-cache: nothing written into the checkout; the graph of ~150 modules builds in about a second.
    r = subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 0:
        pytest.fail(f"import contracts broken (lint-imports exit {r.returncode}):\n{r.stdout}{r.stderr}", pytrace=False)
