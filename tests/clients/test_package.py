"""The distribution stays light and its public surface stays deliberate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import nettailor_client
from nettailor_client import errors

CLIENTS = Path(__file__).resolve().parents[2] / "clients"


def test_import_does_not_import_torch() -> None:
    code = ("import nettailor_client, nettailor_client.cli, sys; "
            "assert 'torch' not in sys.modules, 'torch was imported'; "
            "assert 'numpy' not in sys.modules and 'PIL' not in sys.modules, 'optional imports were eager'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_dependencies_are_httpx_and_pydantic_only() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((CLIENTS / "pyproject.toml").read_text())["project"]
    assert sorted(d.split(">")[0].split("=")[0] for d in project["dependencies"]) == ["httpx", "pydantic"]
    assert project["scripts"] == {"nettailor-client": "nettailor_client.cli:main"}


def test_exported_members() -> None:
    for name in nettailor_client.__all__:
        assert hasattr(nettailor_client, name), name
    exported = {n for n in dir(nettailor_client) if not n.startswith("_")}
    modules = {"async_client", "cli", "client", "errors", "folder", "images", "models", "retry", "session"}
    assert exported - modules - set(nettailor_client.__all__) <= {"annotations"}


def test_every_exception_is_drawn_in_the_docstring() -> None:
    classes = [getattr(errors, n) for n in errors.__all__ if isinstance(getattr(errors, n), type)]
    assert classes
    for cls in classes:
        assert issubclass(cls, errors.NetTailorError)
        assert cls.__name__ in errors.__doc__, cls.__name__
