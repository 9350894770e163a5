"""``nettailor gc``: dry run, collection, retention from the command line, verification."""

from __future__ import annotations

import json

from blockstore import DirStore
from nettailor.cli import main


def test_gc_dry_run_then_collect(tmp_path, make_pack, capsys):
    store = DirStore(tmp_path / "store")
    shas = [store.register("digits", make_pack(seed=i).to_bytes())[0].sha256 for i in range(4)]
    url = str(store.root)
    assert main(["gc", "--store", url, "--keep-versions", "2", "--dry-run", "--json"]) == 0
    preview = json.loads(capsys.readouterr().out)
    assert preview["dry_run"] and preview["versions_pruned"] == 2 and set(preview["packs_deleted"]) == set(shas[:2])
    assert len(store.get_record("digits").history) == 4  # nothing changed
    assert main(["gc", "--store", url, "--keep-versions", "2"]) == 0
    out = capsys.readouterr().out
    assert "pruned 2 old version(s); deleted 2 pack(s)" in out and shas[0] in out
    assert [h.version for h in store.get_record("digits").history] == [3, 4]
    assert sorted(p.stem for p in (store.root / "packs").glob("*.pack")) == sorted(shas[2:])


def test_gc_verify_reports_and_marks_a_corrupt_pack(tmp_path, make_pack, capsys):
    store = DirStore(tmp_path / "store")
    rec, _ = store.register("digits", make_pack().to_bytes())
    path = store.root / "packs" / f"{rec.sha256}.pack"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    assert main(["gc", "--store", str(store.root), "--verify"]) == 1
    assert "corrupt" in capsys.readouterr().out
    assert rec.sha256 in store.corrupt_digests()


def test_gc_bad_retention_is_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NETTAILOR_KEEP_VERSIONS", "zero")
    assert main(["gc", "--store", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NETTAILOR_KEEP_VERSIONS" in err
