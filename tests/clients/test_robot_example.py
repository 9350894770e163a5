"""clients/examples/robot.py, as the README's demo runs it."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from .conftest import png

ROBOT = Path(__file__).resolve().parents[2] / "clients" / "examples" / "robot.py"


def _robot(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROBOT), *args], capture_output=True, text=True, timeout=120)


def test_robot_generated_frames(live_server) -> None:
    r = _robot("--url", live_server.url, "--tasks", "alpha,beta,gamma", "--frames", "3")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:4] == ["frame", "alpha", "beta", "gamma"]
    assert [line.split()[0] for line in lines[1:4]] == ["0", "1", "2"]
    assert "all (9 switches)" in r.stdout


def test_robot_image_dir_without_hints(live_server, tmp_path) -> None:
    for i in range(2):
        (tmp_path / f"f{i}.png").write_bytes(png(seed=i))
    r = _robot("--url", live_server.url, "--tasks", "gamma,alpha", "--frames", "3", "--images", str(tmp_path),
               "--no-hint")
    assert r.returncode == 0, r.stderr
    assert "all (6 switches)" in r.stdout


def test_robot_fails_loudly(live_server) -> None:
    r = _robot("--url", live_server.url, "--tasks", "alpha,no-such-task", "--frames", "1")
    assert r.returncode == 1
    assert "TaskNotFound" in r.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = _robot("--url", f"http://127.0.0.1:{port}", "--tasks", "a,b,c", "--frames", "1", "--reconnect-timeout", "0.5")
    assert r.returncode == 1
    assert "ServerUnreachable" in r.stderr
