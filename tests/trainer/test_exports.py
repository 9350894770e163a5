from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trainer


def test_public_names_resolve():
    for name in trainer.__all__:
        assert getattr(trainer, name) is not None, name


def test_trainer_never_imports_server():
    code = ("import sys, trainer, trainer.cli, trainer.tailor, trainer.report; "
            "assert not any(m == 'server' or m.startswith('server.') for m in sys.modules), 'server imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(Path(__file__).resolve().parents[2]))
