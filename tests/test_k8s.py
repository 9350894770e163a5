"""deploy/k8s/ is valid Kubernetes and agrees with the code.

No cluster runs here, so the manifests are rendered as ``kubectl apply -k`` would (a small renderer of
the kustomize features they use, checked against ``kubectl kustomize`` where kubectl exists), each
object is validated against the JSON schema of a current Kubernetes release (the ``kubernetes-validate``
package ships the schemas), and the wiring is checked against the code: commands parse with the real
parsers, environment names are real settings, ports, probes, selectors and names line up.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.settings import Settings

from .test_deploy import ROOT, SETTING_VARS, dockerfile_uid, parse_command

K8S = ROOT / "deploy" / "k8s"
VARIANTS = ["base", "gpu"]


def _merge(target: dict, patch: dict) -> None:
    """Strategic merge, as far as these patches need it: maps merge, lists of named maps merge by name."""
    for key, value in patch.items():
        old = target.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            _merge(old, value)
        elif (isinstance(value, list) and isinstance(old, list) and value and all(
                isinstance(v, dict) and "name" in v for v in value + old)):
            by_name = {item["name"]: item for item in old}
            for item in value:
                if item["name"] in by_name:
                    _merge(by_name[item["name"]], item)
                else:
                    old.append(copy.deepcopy(item))
        else:
            target[key] = copy.deepcopy(value)


def _pod_specs(docs: list[dict]) -> list[dict]:
    specs = []
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "Job"):
            specs.append(d["spec"]["template"]["spec"])
    return specs


def _containers(docs: list[dict]) -> list[dict]:
    return [c for spec in _pod_specs(docs) for c in spec.get("initContainers", []) + spec["containers"]]


def render(path: Path) -> list[dict]:
    k = yaml.safe_load((path / "kustomization.yaml").read_text())
    assert set(k) <= {"apiVersion", "kind", "namespace", "resources", "images", "patches"}, \
        "the renderer below knows only these kustomize fields"
    docs: list[dict] = []
    for res in k.get("resources", []):
        p = (path / res).resolve()
        docs += render(p) if p.is_dir() else [d for d in yaml.safe_load_all(p.read_text()) if d]
    for patch in k.get("patches", []):
        body = yaml.safe_load((path / patch["path"]).read_text())
        (target,) = [d for d in docs if d["kind"] == body["kind"] and d["metadata"]["name"] == body["metadata"]["name"]]
        _merge(target, body)
    for img in k.get("images", []):
        for c in _containers(docs):
            if c["image"] == img["name"] or c["image"].startswith(img["name"] + ":"):
                c["image"] = f"{img.get('newName', img['name'])}:{img['newTag']}"
    for d in docs:
        if "namespace" in k:
            d["metadata"]["namespace"] = k["namespace"]
    return docs


RENDERED = {v: render(K8S / v) for v in VARIANTS}


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(obj: dict, name: str) -> dict:
    (c,) = [c for c in obj["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return c


def env_of(c: dict) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def _key(d: dict) -> tuple[str, str]:
    return d["kind"], d["metadata"]["name"]


def _unordered(x: Any) -> Any:
    """Lists of named maps compared as sets: a strategic merge may move merged entries to the front."""
    if isinstance(x, dict):
        return {k: _unordered(v) for k, v in x.items()}
    if isinstance(x, list):
        items = [_unordered(v) for v in x]
        if items and all(isinstance(v, dict) and "name" in v for v in items):
            return sorted(items, key=lambda v: v["name"])
        return items
    return x


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_renderer_agrees_with_kubectl_kustomize(variant):
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: the renderer stands alone")
    out = subprocess.run(["kubectl", "kustomize", str(K8S / variant)], capture_output=True, text=True, check=True)
    theirs = {_key(d): _unordered(d) for d in yaml.safe_load_all(out.stdout) if d}
    ours = {_key(d): _unordered(d) for d in RENDERED[variant]}
    assert theirs == ours


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_object_validates_against_a_current_kubernetes_schema(variant):
    from kubernetes_validate import utils as kv

    version = kv.latest_version()
    assert tuple(int(x) for x in version.split(".")[:2]) >= (1, 33), f"schemas too old: {version}"
    for doc in RENDERED[variant]:
        # strict: unknown fields (typos) fail too.  A missing schema raises, it is not skipped.
        kv.validate(doc, version, strict=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_commands_parse_and_environment_names_are_real_settings(variant):
    for c in _containers(RENDERED[variant]):
        if c["image"].startswith("nettailor"):
            parse_command(c["command"])
            for name in env_of(c):
                if name.startswith("NETTAILOR_"):
                    assert name in SETTING_VARS, f"{c['name']}: {name} is not a setting ({sorted(SETTING_VARS)})"
        for key in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][key]), f"{c['name']}: {key} needs cpu and memory"


def _flag(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def test_server_ports_probes_service_and_autoscaler_agree():
    from server.app import create_app

    docs = RENDERED["base"]
    deploy = one(docs, "Deployment", "nettailor-server")
    assert deploy["spec"]["replicas"] >= 2
    pod = deploy["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deploy["spec"]["selector"]["matchLabels"].items() <= labels.items()
    c = container(deploy, "server")
    port = int(_flag(c["command"], "--port"))
    assert _flag(c["command"], "--host") == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert port in ports.values()
    paths = create_app(Settings(store="/nonexistent-store", token="t")).openapi()["paths"]
    probes = {k: c[k]["httpGet"] for k in ("livenessProbe", "readinessProbe", "startupProbe")}
    assert probes["livenessProbe"]["path"] == "/healthz" and probes["readinessProbe"]["path"] == "/readyz"
    for probe in probes.values():
        assert probe["path"] in paths
        assert ports.get(probe["port"], probe["port"]) == port
    svc = one(docs, "Service", "nettailor")
    assert svc["spec"]["selector"].items() <= labels.items()
    (svc_port,) = svc["spec"]["ports"]
    assert ports.get(svc_port["targetPort"], svc_port["targetPort"]) == port
    hpa = one(docs, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", "nettailor-server")
    assert hpa["spec"]["minReplicas"] >= 2
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    drain = float(env_of(c).get("NETTAILOR_DRAIN_S", Settings.model_fields["drain_s"].default))
    assert pod["spec"]["terminationGracePeriodSeconds"] > drain + 10, "room to drain, then finish requests"


def test_token_comes_from_the_secret_the_readme_creates():
    c = container(one(RENDERED["base"], "Deployment", "nettailor-server"), "server")
    ref = env_of(c)["NETTAILOR_TOKEN"]["secretKeyRef"]
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"create secret generic ([\w-]+) --from-literal=(\w+)=", readme)
    assert m is not None, "README must show how to create the token's Secret"
    assert (ref["name"], ref["key"]) == (m.group(1), m.group(2))
    assert one(RENDERED["base"], "Service", "nettailor")["metadata"]["namespace"] in readme


def test_redis_keeps_an_append_only_file_on_a_claim_and_every_store_url_reaches_it():
    docs = RENDERED["base"]
    sts = one(docs, "StatefulSet", "redis")
    c = container(sts, "redis")
    assert _flag(c["command"], "--appendonly") == "yes"
    data_dir = _flag(c["command"], "--dir")
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == data_dir]
    assert mount["name"] in {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    svc = one(docs, "Service", sts["spec"]["serviceName"])
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["selector"].items() <= \
        sts["spec"]["template"]["metadata"]["labels"].items()
    redis_port = next(p for p in c["ports"] if p["name"] == svc["spec"]["ports"][0]["targetPort"])["containerPort"]
    for obj in (one(docs, "Deployment", "nettailor-server"), one(docs, "Job", "nettailor-trainer")):
        for ct in obj["spec"]["template"]["spec"]["containers"]:
            url = env_of(ct)["NETTAILOR_STORE"]
            m = re.fullmatch(r"redis://([\w.-]+):(\d+)/\d+", url)
            assert m is not None, url
            assert (m.group(1), int(m.group(2))) == (svc["metadata"]["name"], svc["spec"]["ports"][0]["port"])
            assert svc["spec"]["ports"][0]["port"] == redis_port


def test_trainer_job_publishes_into_redis_and_writes_only_mounted_paths():
    from .test_deploy import demo_module

    job = one(RENDERED["base"], "Job", "nettailor-trainer")
    c = container(job, "trainer")
    assert c["command"][:2] == ["python", "scripts/demo.py"] and "--train-only" in c["command"]
    demo = demo_module()
    work = demo.build_parser().parse_args(c["command"][2:]).work
    in_image = Path("/app") / work.relative_to(demo.ROOT)  # the images' WORKDIR holds the repository
    mounts = [Path(m["mountPath"]) for m in c["volumeMounts"]]
    assert any(in_image.is_relative_to(m) for m in mounts), f"{in_image} is not on a writable volume"
    assert Path("/app/runs") in mounts  # the reports and figures
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")


@pytest.mark.parametrize("variant", VARIANTS)
def test_pods_run_as_the_images_non_root_user(variant):
    uid = dockerfile_uid(ROOT / "deploy" / ("Dockerfile.cuda" if variant == "gpu" else "Dockerfile"))
    for obj in RENDERED[variant]:
        if obj["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        ctx = obj["spec"]["template"]["spec"]["securityContext"]
        assert ctx["runAsNonRoot"] is True
        if any(c["image"].startswith("nettailor") for c in obj["spec"]["template"]["spec"]["containers"]):
            assert ctx["runAsUser"] == uid


def test_gpu_variant_asks_for_a_gpu_and_cuda_where_the_base_has_neither():
    for name, kind in (("nettailor-server", "Deployment"), ("nettailor-trainer", "Job")):
        cpu, gpu = (one(RENDERED[v], kind, name) for v in VARIANTS)
        cname = "server" if kind == "Deployment" else "trainer"
        c_cpu, c_gpu = container(cpu, cname), container(gpu, cname)
        assert "nvidia.com/gpu" not in c_cpu["resources"]["limits"] and env_of(c_cpu)["NETTAILOR_DEVICE"] == "cpu"
        assert int(c_gpu["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        assert env_of(c_gpu)["NETTAILOR_DEVICE"] == "cuda"
        assert c_gpu["image"].endswith(":cuda") and c_cpu["image"].endswith(":cpu")
        assert any(t["key"] == "nvidia.com/gpu" for t in gpu["spec"]["template"]["spec"]["tolerations"])
        # everything else is the base's
        assert env_of(c_gpu).keys() == env_of(c_cpu).keys() and c_gpu["command"] == c_cpu["command"]
