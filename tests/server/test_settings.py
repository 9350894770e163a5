"""Settings, start-up refusals and the ``nettailor serve`` command line."""

from __future__ import annotations

import argparse

import pytest

from server.app import create_app
from server.cli import register
from server.settings import ConfigError, Settings, get_settings, is_loopback


def test_settings_come_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("NETTAILOR_STORE", "redis://127.0.0.1:6379/0?prefix=x:")
    monkeypatch.setenv("NETTAILOR_TOKEN", "tok")
    monkeypatch.setenv("NETTAILOR_CACHE_BYTES", "1024")
    monkeypatch.setenv("NETTAILOR_BATCH_WINDOW_MS", "0.5")
    get_settings.cache_clear()
    try:
        s = get_settings()
        assert (s.store, s.token, s.cache_bytes, s.batch_window_ms) == ("redis://127.0.0.1:6379/0?prefix=x:", "tok",
                                                                        1024, 0.5)
        assert (s.max_queue, s.max_batch, s.max_upload_bytes, s.max_pixels) == (256, 32, 8 << 20, 16_000_000)
    finally:
        get_settings.cache_clear()


def test_no_token_refuses_to_start_unless_open_on_loopback(tmp_path) -> None:
    with pytest.raises(ConfigError, match="NETTAILOR_TOKEN"):
        create_app(Settings(store=str(tmp_path)))
    with pytest.raises(ConfigError, match="loopback"):
        create_app(Settings(store=str(tmp_path), allow_open=True, host="0.0.0.0"))
    create_app(Settings(store=str(tmp_path), allow_open=True, host="127.0.0.1"))
    create_app(Settings(store=str(tmp_path), token="t", host="0.0.0.0"))
    assert is_loopback("::1") and is_loopback("localhost") and not is_loopback("10.0.0.1")


def test_serve_subcommand_flags() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--port", "9000", "--log-level", "debug", "--ssl-keyfile", "k.pem",
                              "--ssl-certfile", "c.pem"])
    assert (args.host, args.port, args.log_level) == ("127.0.0.1", 9000, "debug")
    assert (str(args.ssl_keyfile), str(args.ssl_certfile)) == ("k.pem", "c.pem")


def test_serve_refuses_an_open_public_bind(monkeypatch, tmp_path) -> None:
    from server.cli import serve

    monkeypatch.delenv("NETTAILOR_TOKEN", raising=False)
    monkeypatch.setenv("NETTAILOR_ALLOW_OPEN", "1")
    monkeypatch.setenv("NETTAILOR_STORE", str(tmp_path))
    with pytest.raises(ConfigError, match="loopback"):
        serve(argparse.Namespace(host="0.0.0.0", port=1, log_level="info", ssl_keyfile=None, ssl_certfile=None))
    get_settings.cache_clear()
