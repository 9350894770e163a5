"""The CLI through its installed entry point, against the real server: output and exit codes."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest

from nettailor_client.cli import EXIT_OK, EXIT_SERVER, EXIT_UNREACHABLE, EXIT_USAGE

from .conftest import TOKEN, build_pack, png


@pytest.fixture
def run(cli_exe: str, live_server, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.delenv("NETTAILOR_TOKEN", raising=False)
    monkeypatch.delenv("NETTAILOR_URL", raising=False)

    def go(*args: str, url: str | None = live_server.url) -> subprocess.CompletedProcess[str]:
        argv = [cli_exe, *args] + (["--url", url] if url else [])
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    return go


@pytest.fixture
def frame(tmp_path):  # type: ignore[no-untyped-def]
    path = tmp_path / "frame.png"
    path.write_bytes(png())
    return path


def test_predict_table_and_json(run, frame) -> None:
    r = run("predict", "alpha", str(frame), str(frame), "--top-k", "2")
    assert r.returncode == EXIT_OK, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["IMAGE", "TASK", "VERSION", "RANK", "LABEL", "PROB", "SERVER_MS"]
    assert len(lines) == 1 + 2 * 2
    assert "alpha-" in lines[1]

    r = run("--json", "predict", "alpha,gamma", str(frame))
    assert r.returncode == EXIT_OK, r.stderr
    out = json.loads(r.stdout)
    assert [o["task_id"] for o in out] == ["alpha", "gamma"]
    assert out[0]["image"] == str(frame)
    assert out[0]["predictions"][0]["label"].startswith("alpha-")


def test_tasks_and_task(run) -> None:
    r = run("tasks")
    assert r.returncode == EXIT_OK, r.stderr
    assert r.stdout.split()[:2] == ["TASK", "VERSION"]
    assert {"alpha", "beta", "gamma"} <= {line.split()[0] for line in r.stdout.splitlines()[1:]}

    r = run("tasks", "--json")
    assert {"alpha", "beta", "gamma"} <= {t["task_id"] for t in json.loads(r.stdout)["tasks"]}

    r = run("task", "beta")
    assert r.returncode == EXIT_OK, r.stderr
    assert "beta-0, beta-1, beta-2, beta-3" in r.stdout
    assert "CURRENT" in r.stdout
    detail = json.loads(run("task", "beta", "--json").stdout)
    assert detail["labels"] == ["beta-0", "beta-1", "beta-2", "beta-3"]


def test_register_rollback_delete(run, live_server, tmp_path) -> None:
    v1, v2 = tmp_path / "v1.pack", tmp_path / "v2.pack"
    v1.write_bytes(build_pack(live_server.backbone, "cli-task", 2, version="1").to_bytes())
    v2.write_bytes(build_pack(live_server.backbone, "cli-task", 2, version="2").to_bytes())

    r = run("register", "cli-task", str(v1), "--token", TOKEN)
    assert r.returncode == EXIT_OK, r.stderr
    assert "registered version 1" in r.stdout
    r = run("register", "cli-task", str(v2), "--token", TOKEN, "--json")
    assert json.loads(r.stdout)["version"] == 2
    r = run("rollback", "cli-task", "1", "--token", TOKEN)
    assert (r.returncode, "now at version 1" in r.stdout) == (EXIT_OK, True)
    r = run("delete", "cli-task", "--token", TOKEN)
    assert (r.returncode, r.stdout.strip()) == (EXIT_OK, "deleted cli-task")


@pytest.mark.parametrize("args", [
    ("predict", "no-such-task", "FRAME"),
    ("task", "no-such-task"),
    ("delete", "alpha"),  # no token: 401
    ("rollback", "alpha", "42", "--token", TOKEN),
    ("register", "alpha", "PACK", "--token", TOKEN),  # garbage pack: 422
])
def test_server_errors_exit_3(run, frame, tmp_path, args) -> None:
    pack = tmp_path / "garbage.pack"
    pack.write_bytes(b"garbage")
    argv = [str(frame) if a == "FRAME" else str(pack) if a == "PACK" else a for a in args]
    r = run(*argv)
    assert r.returncode == EXIT_SERVER, (r.stdout, r.stderr)
    assert r.stderr.startswith("nettailor-client: ")


def test_server_error_json_on_stderr(run) -> None:
    r = run("task", "no-such-task", "--json")
    assert r.returncode == EXIT_SERVER
    assert json.loads(r.stderr) == {"error": "task_not_found", "detail": json.loads(r.stderr)["detail"],
                                    "status": 404}


@pytest.mark.parametrize("args", [
    (),                                   # no command
    ("bogus",),                           # unknown command
    ("rollback", "alpha", "not-a-number"),
    ("predict", "alpha"),                 # no image
    ("predict", "alpha", "/no/such/file.png"),
    ("register", "alpha", "/no/such/file.pack"),
])
def test_usage_errors_exit_2(run, args) -> None:
    r = run(*args)
    assert r.returncode == EXIT_USAGE, (r.stdout, r.stderr)


def test_unreachable_exits_4(run) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run("tasks", url=f"http://127.0.0.1:{port}")
    assert r.returncode == EXIT_UNREACHABLE
    assert "unreachable" in r.stderr


def test_help_and_version(run) -> None:
    r = run("--help", url=None)
    assert r.returncode == EXIT_OK
    assert "exit codes" in r.stdout
    assert run("--version", url=None).stdout.startswith("nettailor-client ")
