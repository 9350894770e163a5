"""Every error code of docs/http-api.md, provoked on the real server, lands on its exception class."""

from __future__ import annotations

import io
import socket
import struct
import zlib

import httpx
import pytest
from PIL import Image

from nettailor_client import (
    APIError,
    BackboneMismatch,
    BadImage,
    Client,
    ClientError,
    CorruptPack,
    Forbidden,
    ImageEncodingError,
    ImageTooLarge,
    InvalidRequest,
    InvalidTaskId,
    NotFound,
    PackTaskMismatch,
    PayloadTooLarge,
    ServerError,
    ServerUnreachable,
    StoreUnavailable,
    TaskNotFound,
    TaskUnavailable,
    Timeout,
    Unauthorized,
    Unavailable,
    UnsupportedFormat,
    UnsupportedMediaType,
    VersionNotFound,
)
from nettailor_client.errors import raise_for_response

from .conftest import MAX_PIXELS, MAX_UPLOAD_BYTES, TOKEN, build_pack, png, with_format


def _expect(exc_type: type[APIError], status: int, code: str, fn, *args, **kwargs) -> APIError:  # type: ignore[no-untyped-def]
    with pytest.raises(exc_type) as info:
        fn(*args, **kwargs)
    err = info.value
    assert (err.status, err.code) == (status, code), err
    assert err.detail
    return err


def _big_png_header(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width x height`` pixels (a decompression-bomb shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_task_not_found(client: Client) -> None:
    err = _expect(TaskNotFound, 404, "task_not_found", client.predict, "no-such-task", png())
    assert isinstance(err, NotFound) and isinstance(err, ClientError)
    _expect(TaskNotFound, 404, "task_not_found", client.get_task, "no-such-task")
    _expect(TaskNotFound, 404, "task_not_found", client.predict_multi, png(), ["alpha", "no-such-task"])


def test_version_not_found(client: Client) -> None:
    _expect(VersionNotFound, 404, "version_not_found", client.rollback, "alpha", 99)


def test_invalid_task_id(client: Client) -> None:
    _expect(InvalidTaskId, 422, "invalid_task_id", client.predict, "-bad id!", png())
    _expect(InvalidTaskId, 422, "invalid_task_id", client.get_task, "x" * 65)


def test_validation_error(client: Client) -> None:
    _expect(InvalidRequest, 422, "validation_error", client.predict, "alpha", png(), top_k=0)
    _expect(InvalidRequest, 422, "validation_error", client.rollback, "alpha", 0)


def test_unsupported_media_type(client: Client) -> None:
    _expect(UnsupportedMediaType, 415, "unsupported_media_type", client.predict, "alpha", b"GIF89a not supported")


def test_bad_image(client: Client) -> None:
    _expect(BadImage, 422, "bad_image", client.predict, "alpha", png()[:60])


def test_payload_too_large(client: Client) -> None:
    big = png(size=(300, 300))  # random pixels do not compress: about 270 kB
    assert len(big) > MAX_UPLOAD_BYTES and MAX_PIXELS > 300 * 300
    _expect(PayloadTooLarge, 413, "payload_too_large", client.predict, "alpha", big)


def test_image_too_large(client: Client) -> None:
    bomb = _big_png_header(20_000, 20_000)
    assert len(bomb) < MAX_UPLOAD_BYTES
    _expect(ImageTooLarge, 413, "image_too_large", client.predict, "alpha", bomb)


def test_pack_errors(live_server, client: Client, other_backbone) -> None:
    _expect(CorruptPack, 422, "corrupt_pack", client.register, "packerr", b"garbage" * 10)
    good = build_pack(live_server.backbone, "packerr", 2).to_bytes()
    _expect(UnsupportedFormat, 422, "unsupported_format", client.register, "packerr",
            with_format(good, "nettailor-pack/99"))
    _expect(PackTaskMismatch, 422, "pack_task_mismatch", client.register, "other-id", good)
    foreign = build_pack(other_backbone, "packerr", 2).to_bytes()
    _expect(BackboneMismatch, 409, "backbone_mismatch", client.register, "packerr", foreign)


def test_unauthorized_and_forbidden(live_server) -> None:
    pack = build_pack(live_server.backbone, "authz", 2).to_bytes()
    with Client(live_server.url, token="", retries=0) as anon:
        _expect(Unauthorized, 401, "unauthorized", anon.register, "authz", pack)
        _expect(Unauthorized, 401, "unauthorized", anon.delete, "alpha")
        assert anon.predict("alpha", png()).task_id == "alpha"  # inference needs no token
    with Client(live_server.url, token="wrong-" + TOKEN, retries=0) as wrong:
        _expect(Forbidden, 403, "forbidden", wrong.rollback, "alpha", 1)


def test_task_unavailable(live_server, client: Client) -> None:
    reg = client.register("broken", build_pack(live_server.backbone, "broken", 2).to_bytes())
    (live_server.root / "packs" / f"{reg.sha256}.pack").write_bytes(b"these bytes rotted on disk")
    try:
        err = _expect(TaskUnavailable, 503, "task_unavailable", client.predict, "broken", png())
        assert isinstance(err, Unavailable) and isinstance(err, ServerError)
        assert client.predict("alpha", png()).task_id == "alpha"  # other tasks keep serving
    finally:
        client.delete("broken")


def test_corrupt_record_is_that_task_unavailable(live_server, client: Client) -> None:
    # A record the DirStore cannot read (a directory where its JSON file should be) is a corrupt record:
    # that task is unavailable, the others keep serving.
    bad = live_server.root / "tasks" / "unreadable.json"
    bad.mkdir()
    try:
        _expect(TaskUnavailable, 503, "corrupt_record", client.predict, "unreadable", png())
    finally:
        bad.rmdir()


def test_server_unreachable() -> None:
    with socket.socket() as s:  # a port that was free a moment ago and has no listener
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Client(f"http://127.0.0.1:{port}", retries=0) as c, pytest.raises(ServerUnreachable):
        c.list_tasks()


def test_timeout() -> None:
    # A listener that never accepts: the TCP handshake completes in the backlog, no answer ever comes.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        with Client(f"http://127.0.0.1:{s.getsockname()[1]}", timeout=0.3, retries=0) as c, \
                pytest.raises(Timeout):
            c.list_tasks()


@pytest.mark.parametrize("image", [12345, "a string path that does not exist", io.StringIO("text")])
def test_client_side_image_errors(client: Client, image) -> None:
    with pytest.raises((ImageEncodingError, FileNotFoundError)):
        client.predict("alpha", image)


def test_numpy_dtype_error(client: Client) -> None:
    np = pytest.importorskip("numpy")
    with pytest.raises(ImageEncodingError, match="uint8"):
        client.predict("alpha", np.zeros((8, 8), dtype=np.float32))
    with pytest.raises(ImageEncodingError, match="shape"):
        client.predict("alpha", np.zeros((8, 8, 2), dtype=np.uint8))


def test_pil_image_round_trip_is_png() -> None:
    from nettailor_client.images import encode_image

    name, data, ctype = encode_image(Image.new("RGB", (4, 4)))
    assert (name, ctype) == ("image.png", "image/png")
    assert Image.open(io.BytesIO(data)).size == (4, 4)


@pytest.mark.parametrize(("status", "body", "expected"), [
    (418, {"error": "some_new_code", "detail": "from a newer server"}, ClientError),
    (404, {"detail": "Not Found"}, NotFound),
    (502, "<html>bad gateway</html>", ServerError),
    (503, "", Unavailable),
    (500, {"error": "internal", "detail": "boom"}, ServerError),
])
def test_fallback_by_status(status: int, body, expected: type[APIError]) -> None:
    # Answers the real server never gives (other servers and proxies do): pure mapping, no transport.
    kw = {"json": body} if isinstance(body, dict) else {"text": body}
    response = httpx.Response(status, request=httpx.Request("GET", "http://x/"), **kw)
    with pytest.raises(expected) as info:
        raise_for_response(response)
    assert type(info.value) is expected
    assert info.value.status == status


def test_store_unavailable_and_not_ready_codes() -> None:
    for code, cls in (("store_unavailable", StoreUnavailable), ("not_ready", Unavailable)):
        response = httpx.Response(503, json={"error": code, "detail": "x"}, request=httpx.Request("GET", "http://h/"))
        with pytest.raises(cls) as e:
            raise_for_response(response)
        assert e.value.code == code
