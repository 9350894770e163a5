"""server.loading: a cold load from the store; validation once per digest and process."""

from __future__ import annotations

from blockstore import TaskPack
from server import loading


def test_a_digest_is_validated_once_per_process(store, backbone, make_pack, monkeypatch) -> None:
    rec, _ = store.register("t1", make_pack("t1").to_bytes())
    calls: list[str] = []
    real = TaskPack.validate
    monkeypatch.setattr(TaskPack, "validate", lambda self, bb: (calls.append(self.task_id), real(self, bb))[1])
    monkeypatch.setattr(loading, "_VALIDATED", loading._Validated(size=2))
    for _ in range(3):  # the digest is verified on every load; validation runs on the first only
        task = loading.load_stored(store, backbone, "t1", rec.version, rec.sha256)
    assert calls == ["t1"] and task.task_id == "t1"
    for i in range(2):  # pushed out of the bounded memo: validated again
        r, _ = store.register(f"o{i}", make_pack(f"o{i}", seed=i + 5).to_bytes())
        loading.load_stored(store, backbone, f"o{i}", r.version, r.sha256)
    loading.load_stored(store, backbone, "t1", rec.version, rec.sha256)
    assert calls == ["t1", "o0", "o1", "t1"]
