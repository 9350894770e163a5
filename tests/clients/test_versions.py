"""Versions a client can hold on to: version= and alias= in the SDK, pinned sessions, the alias CLI."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator

import pytest

from nettailor_client import AliasNotFound, AsyncClient, Client, InvalidRequest, VersionNotFound

from .conftest import TOKEN, build_pack, png


@pytest.fixture
def two_versions(live_server, client: Client) -> Iterator[str]:
    """A task 'pinned' with versions 1 (pack 'a') and 2 (pack 'b', current); deleted afterwards."""
    for v in ("a", "b"):
        client.register("pinned", build_pack(live_server.backbone, "pinned", 2, version=v).to_bytes())
    yield "pinned"
    client.delete("pinned")


def test_predict_forms_take_a_version_or_an_alias(client: Client, two_versions: str) -> None:
    t = two_versions
    assert client.predict(t, png()).pack_version == "b"
    assert client.predict(t, png(), version=1).pack_version == "a"
    assert client.predict_batch(t, [png(), png(seed=1)], version=1).version == 1
    assert client.predict_multi(png(), [t, "alpha"], version=1)[t].version == 1
    res = client.set_alias(t, "production", 1)
    assert res.aliases == {"production": 1} and res.changed
    assert client.predict(t, png(), alias="production").version == 1
    assert client.predict_multi(png(), [t], alias="production")[t].version == 1
    detail = client.get_task(t)
    assert detail.aliases == {"production": 1} and [c.version for c in detail.alias_log] == [1]
    with pytest.raises(VersionNotFound, match=r"\[1, 2\]"):
        client.predict(t, png(), version=5)
    with pytest.raises(ValueError, match="not both"):
        client.predict(t, png(), version=1, alias="production")
    with pytest.raises(InvalidRequest):
        client.predict(t, png(), alias="2nd")
    client.delete_alias(t, "production")
    with pytest.raises(AliasNotFound):
        client.predict(t, png(), alias="production")


def test_a_session_pins_a_version_or_an_alias_for_a_mission(client: Client, live_server, two_versions: str) -> None:
    t = two_versions
    client.set_alias(t, "production", 1)
    with client.task(t, alias="production") as s:
        s.predict(png())
        client.register(t, build_pack(live_server.backbone, t, 2, version="c").to_bytes())  # version 3 lands
        s.predict(png())
        assert [r.version for r in s.records] == [1, 1]
        s.switch(t, version=2)
        assert s.predict(png()).pack_version == "b"
        s.switch(t)  # no pin: the current version
        assert s.predict(png()).version == 3
        s.switch("alpha", version=1)
        assert s.predict(png()).version == 1
    with pytest.raises(ValueError, match="not both"):
        client.task(t, version=1, alias="production")


@pytest.mark.anyio
async def test_async_client_and_session(live_server, two_versions: str) -> None:
    t = two_versions
    async with AsyncClient(live_server.url, token=TOKEN, retries=0) as c:
        assert (await c.set_alias(t, "canary", 2)).aliases == {"canary": 2}
        assert (await c.predict(t, png(), version=1)).version == 1
        async with c.task(t, alias="canary") as s:
            assert (await s.predict(png())).version == 2
        await c.delete_alias(t, "canary")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_cli_alias_set_rm_and_pinned_predict(cli_exe: str, live_server, two_versions: str, tmp_path,
                                             monkeypatch) -> None:
    monkeypatch.delenv("NETTAILOR_URL", raising=False)
    monkeypatch.setenv("NETTAILOR_TOKEN", TOKEN)
    frame = tmp_path / "f.png"
    frame.write_bytes(png())
    run: Callable[..., subprocess.CompletedProcess[str]] = lambda *a: subprocess.run(  # noqa: E731
        [cli_exe, *a, "--url", live_server.url], capture_output=True, text=True, timeout=60)
    r = run("alias", "set", two_versions, "production", "1")
    assert r.returncode == 0 and "production now points at version 1" in r.stdout, r.stderr
    r = run("--json", "predict", two_versions, str(frame), "--alias", "production")
    assert r.returncode == 0 and json.loads(r.stdout)[0]["version"] == 1, r.stderr
    r = run("--json", "predict", two_versions, str(frame), "--version", "2")
    assert r.returncode == 0 and json.loads(r.stdout)[0]["version"] == 2, r.stderr
    assert run("predict", two_versions, str(frame), "--version", "1", "--alias", "x").returncode == 2
    assert run("alias", "rm", two_versions, "production").returncode == 0
    r = run("alias", "rm", two_versions, "production")
    assert r.returncode == 3 and "alias_not_found" in r.stderr
