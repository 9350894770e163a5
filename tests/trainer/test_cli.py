from __future__ import annotations

import argparse
import json

import pytest

from blockstore import DirStore, TaskPack
from nettailor.cli import build_parser, main

STAGES = ("pretrain", "teacher", "student", "prune", "finetune", "tailor", "publish", "inspect", "evaluate")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_stage_is_a_subcommand_with_help_on_every_flag():
    subs = _subparsers(build_parser())
    assert set(STAGES) <= set(subs)
    for name in STAGES:
        for action in subs[name]._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"nettailor {name} {action.option_strings or action.dest} has no help"


@pytest.fixture
def bb_file(tmp_path, backbone):
    path = tmp_path / "bb.safetensors"
    path.write_bytes(backbone.to_bytes())
    return path


def test_bad_arguments_exit_2_with_a_clear_error(tmp_path, bb_file, capsys):
    rc = main(["teacher", "--dataset", "nope", "--backbone-file", str(bb_file), "--work-dir", str(tmp_path)])
    assert rc == 2
    assert "error [data_error]: unknown data set 'nope'" in capsys.readouterr().err
    rc = main(["tailor", "--dataset", "synthetic", "--backbone-file", str(tmp_path / "missing.safetensors")])
    assert rc == 2 and "weights_unavailable" in capsys.readouterr().err
    rc = main(["student", "--dataset", "synthetic", "--backbone-file", str(bb_file), "--k", "zero",
               "--work-dir", str(tmp_path)])
    assert rc == 2 and "--k must be" in capsys.readouterr().err
    rc = main(["student", "--dataset", "synthetic", "--backbone-file", str(bb_file), "--work-dir", str(tmp_path)])
    assert rc == 2 and "run 'nettailor teacher' first" in capsys.readouterr().err
    rc = main(["tailor", "--dataset", "synthetic", "--store", str(tmp_path / "empty-store")])
    assert rc == 2 and "backbone_not_found" in capsys.readouterr().err


def test_inspect_and_publish(tmp_path, make_pack, bb_file, capsys):
    pack = make_pack(task_id="digits", num_classes=3)
    path = tmp_path / "digits.pack"
    path.write_bytes(pack.to_bytes())
    assert main(["inspect", str(path), "--json", "--backbone-file", str(bb_file)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["task_id"] == "digits" and out["cost"]["blocks_kept"] == 4
    assert len(out["layers"]) == 4 and set(out["layers"][0]["alphas"]) == {"block", "proxy<0"}
    assert main(["inspect", str(path), "--store", str(tmp_path / "nostore")]) == 0
    table = capsys.readouterr().out
    assert "digits" in table and "val_acc" in table
    store_dir = tmp_path / "store"
    assert main(["publish", str(path), "--store", str(store_dir), "--backbone-file", str(bb_file)]) == 0
    capsys.readouterr()
    store = DirStore(store_dir)
    rec, data = store.get_pack("digits")
    assert rec.version == 1 and TaskPack.from_bytes(data).sha256 == pack.sha256
    assert main(["publish", str(tmp_path / "none.pack")]) == 2


@pytest.mark.redis
def test_publish_to_redis(make_pack, redis_store, capsys):
    pack = make_pack(task_id="redis-task")
    path_free = pack.to_bytes()
    from trainer.export import publish

    url = f"redis://127.0.0.1:6379/0?prefix={redis_store.prefix}"
    rec = publish(path_free, url)
    assert rec.version == 1 and redis_store.get_record("redis-task").sha256 == pack.sha256
    assert publish(path_free, url).version == 1  # the same bytes again: unchanged


def test_stages_one_at_a_time(tmp_path, bb_file, capsys):
    common = ["--dataset", "synthetic", "--backbone-file", str(bb_file), "--work-dir", str(tmp_path / "w"),
              "--no-progress", "--max-steps", "3", "--batch-size", "32", "--cache-dir", ""]
    assert main(["teacher", *common, "--steps", "6"]) == 0
    assert main(["student", *common, "--steps", "6", "--k", "dense"]) == 0
    assert main(["prune", "--backbone-file", str(bb_file), "--work-dir", str(tmp_path / "w"), "--blocks", "2",
                 "--threshold", "0.1"]) == 0
    assert main(["finetune", *common, "--steps", "6"]) == 0
    out = capsys.readouterr().out
    last = json.loads(out[out.rindex("{\n"):])
    assert last["blocks_kept"] <= 2 and 0.0 <= last["val_acc"] <= 1.0
    assert (tmp_path / "w" / "finetuned.pack").is_file()


def test_evaluate_a_pack_on_a_data_set(tmp_path, bb_file, make_pack, capsys):
    pack = make_pack(task_id="toy", num_classes=3)
    path = tmp_path / "toy.pack"
    path.write_bytes(pack.to_bytes())
    rc = main(["evaluate", str(path), "--dataset", "synthetic:3", "--backbone-file", str(bb_file), "--cache-dir", "",
               "--out", str(tmp_path / "eval")])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    result = json.loads((tmp_path / "eval" / "toy-eval.json").read_text())
    assert out["accuracy"] == result["accuracy"] and result["images"] == 256
    cm = result["confusion"]
    assert sum(map(sum, cm)) == 256 and len(cm) == 3
    assert result["accuracy"] == pytest.approx(sum(cm[i][i] for i in range(3)) / 256)
    assert (tmp_path / "eval" / "toy-confusion.png").read_bytes()[:4] == b"\x89PNG"
    rc = main(["evaluate", str(path), "--dataset", "synthetic:5", "--backbone-file", str(bb_file), "--cache-dir", ""])
    assert rc == 2 and "cannot be matched" in capsys.readouterr().err
