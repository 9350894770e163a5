"""Folder prediction: files and folders through predict_batch, in order, with per-file errors."""

from __future__ import annotations

import csv
import io
import json

import pytest

from nettailor_client import Client
from nettailor_client.cli import EXIT_OK, EXIT_SERVER, EXIT_USAGE, main
from nettailor_client.folder import Progress, find_images, predict_files

from .conftest import png


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for i in range(5):
        (root / f"{i}.png").write_bytes(png(seed=i))
    for i in range(5, 7):
        (root / "sub" / f"{i}.png").write_bytes(png(seed=i))
    (root / "notes.txt").write_text("not an image")
    return root


def _cli(live_server, capsys, *args: str) -> tuple[int, str, str]:
    rc = main([*args, "--url", live_server.url, "--quiet"])
    out, err = capsys.readouterr()
    return rc, out, err


def test_find_images(folder):
    assert [p.rsplit("/", 1)[1] for p in find_images([str(folder)])] == [f"{i}.png" for i in range(5)]
    assert len(find_images([str(folder)], recursive=True)) == 7
    assert find_images([str(folder / "3.png"), str(folder / "sub")]) == [str(folder / "3.png"),
                                                                        str(folder / "sub" / "5.png"),
                                                                        str(folder / "sub" / "6.png")]
    with pytest.raises(FileNotFoundError):
        find_images([str(folder / "missing.png")])


def test_batched_answers_equal_one_request_per_file(client: Client, folder):
    files = find_images([str(folder)], recursive=True)
    done: list[int] = []
    results = list(predict_files(client, ["alpha"], files, batch_size=3, concurrency=2, top_k=3,
                                 on_progress=done.append))
    assert [r.image for r in results] == files and sum(done) == len(files)
    for r in results:
        alone = client.predict("alpha", r.image, top_k=3)
        assert r.prediction is not None and r.error is None
        assert [(p.label, round(p.prob, 5)) for p in r.prediction.predictions] == [
            (p.label, round(p.prob, 5)) for p in alone.predictions]


def test_cli_formats(live_server, capsys, folder):
    rc, out, _ = _cli(live_server, capsys, "predict", "alpha", str(folder), "-r", "--format", "csv",
                      "--batch-size", "2", "--top-k", "1")
    assert rc == EXIT_OK
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["image"] for r in rows] == find_images([str(folder)], recursive=True)
    assert all(r["label"].startswith("alpha-") and r["rank"] == "1" and not r["error"] for r in rows)

    rc, out, _ = _cli(live_server, capsys, "predict", "alpha,beta", str(folder / "0.png"), str(folder / "1.png"),
                      "--format", "jsonl", "--top-k", "2")
    lines = [json.loads(line) for line in out.splitlines()]
    assert rc == EXIT_OK and [(o["image"][-5:], o["task_id"]) for o in lines] == [
        ("0.png", "alpha"), ("0.png", "beta"), ("1.png", "alpha"), ("1.png", "beta")]
    assert len(lines[0]["predictions"]) == 2

    rc, out, _ = _cli(live_server, capsys, "predict", "gamma", str(folder), "--concurrency", "1")
    assert rc == EXIT_OK and out.split()[:7] == ["IMAGE", "TASK", "VERSION", "RANK", "LABEL", "PROB", "SERVER_MS"]
    assert len(out.splitlines()) == 1 + 5 * 5


def test_a_bad_file_gets_an_error_row_and_the_rest_their_answers(live_server, capsys, folder):
    (folder / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"broken" * 10)
    rc, out, err = _cli(live_server, capsys, "predict", "alpha", str(folder), "--format", "jsonl", "--top-k", "1")
    assert rc == EXIT_SERVER and "1 of 5 predictions failed" in err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [o.get("error") for o in lines] == [None, None, "bad_image", None, None]
    assert all(o["predictions"][0]["label"].startswith("alpha-") for i, o in enumerate(lines) if i != 2)
    rc, _, _ = _cli(live_server, capsys, "predict", "alpha", str(folder / "nope"))
    assert rc == EXIT_USAGE


def test_progress_bar_draws_only_when_asked():
    buf = io.StringIO()
    bar = Progress(4, stream=buf)  # not a terminal: silent
    bar.update(4)
    bar.close()
    assert buf.getvalue() == ""
    bar = Progress(4, stream=buf, enabled=True)
    bar.update(2)
    bar.update(2)
    bar.close()
    assert "4/4 files" in buf.getvalue() and buf.getvalue().endswith("\n")
