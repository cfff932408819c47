"""Dataset download against a real HTTP server on 127.0.0.1 (Range support, broken transfers, bad archives)."""
from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from src.data.datasets import default_data_root
from src.data.download import Archive, DownloadError, Source, download, extract, fetch, main


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and srv.ranges:
            start = int(rng[len("bytes="):].split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.path in srv.break_once:  # announce everything, send half, hang up
            srv.break_once.discard(self.path)
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(payload)


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests, srv.break_once, srv.ranges = {}, [], set(), True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def _set5_paths():
    folder = default_data_root() / "Set5" / "HR"
    if not folder.is_dir():
        pytest.skip(f"{folder} not available")
    return sorted(folder.glob("*.png"))


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _set5_zip() -> bytes:
    return _zip({f"benchmark/Set5/HR/{p.name}": p.read_bytes() for p in _set5_paths()}
                | {"benchmark/Set14/HR/other.png": b"not extracted"})


def _source(data: bytes, name="Set5", filename="bench.zip", **kw) -> Source:
    return Source(name, Archive(filename, "http://example.invalid/" + filename, len(data),
                                hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest()),
                  f"benchmark/{name}/HR/", **kw)


def test_fetch_verifies_and_extracts(server, tmp_path):
    data = _set5_zip()
    server.files["/bench.zip"] = data
    hr = fetch(_source(data, n_images=5), tmp_path, base_url=server.base)
    assert sorted(p.name for p in hr.iterdir()) == [p.name for p in _set5_paths()]
    assert (hr / "baby.png").read_bytes() == (_set5_paths()[0]).read_bytes()
    assert not (tmp_path / "Set14").exists()
    assert not list(tmp_path.glob(".*"))  # no temporary extraction folder left
    # a second call finds the set and does not touch the network
    n = len(server.requests)
    fetch(_source(data), tmp_path, base_url=server.base)
    assert len(server.requests) == n


def test_checksum_mismatch_deletes_archive_and_extracts_nothing(server, tmp_path):
    data = _set5_zip()
    corrupt = bytearray(data)
    corrupt[len(corrupt) // 2] ^= 0xFF
    server.files["/bench.zip"] = bytes(corrupt)
    with pytest.raises(DownloadError, match="sha256 .* does not match"):
        fetch(_source(data), tmp_path, base_url=server.base)
    assert not (tmp_path / "Set5").exists()
    assert not (tmp_path / "downloads" / "bench.zip").exists()
    assert not list(tmp_path.glob(".*"))


@pytest.mark.parametrize("evil", ["benchmark/Set5/HR/../../../escape.png", "/tmp/abs_escape.png"])
def test_path_traversal_zip_is_rejected(server, tmp_path, evil):
    data = _zip({"benchmark/Set5/HR/ok.png": b"x", evil: b"evil"})
    server.files["/evil.zip"] = data
    with pytest.raises(DownloadError, match="refusing"):
        fetch(_source(data, filename="evil.zip"), tmp_path / "root", base_url=server.base)
    assert not (tmp_path / "root" / "Set5").exists()
    assert not (tmp_path / "escape.png").exists() and not list(tmp_path.rglob("escape.png"))


def test_tar_with_escaping_symlink_is_rejected(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        link = tarfile.TarInfo("benchmark/Set5/HR/link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "../../../../etc/passwd"
        t.addfile(link)
    (tmp_path / "evil.tar").write_bytes(buf.getvalue())
    with pytest.raises(DownloadError, match="refusing to extract link"):
        extract(tmp_path / "evil.tar", "benchmark/Set5/HR/", tmp_path / "Set5" / "HR")
    assert not (tmp_path / "Set5").exists()


def test_interrupted_download_is_resumed(server, tmp_path):
    data = _set5_zip()
    server.files["/bench.zip"] = data
    server.break_once.add("/bench.zip")
    hr = fetch(_source(data), tmp_path, base_url=server.base)
    assert len(list(hr.iterdir())) == 5
    ranges = [r for p, r in server.requests if p == "/bench.zip"]
    assert ranges == [None, f"bytes={len(data) // 2}-"]


def test_partial_file_from_earlier_run_is_resumed(server, tmp_path):
    data = b"0123456789" * 1000
    server.files["/blob.bin"] = data
    dest = tmp_path / "blob.bin"
    dest.with_name("blob.bin.part").write_bytes(data[:3000])
    download(f"{server.base}/blob.bin", dest, size=len(data))
    assert dest.read_bytes() == data
    assert server.requests[-1] == ("/blob.bin", "bytes=3000-")
    # a .part that already holds everything (size unknown): the server answers 416 and the file is kept
    dest3 = tmp_path / "blob3.bin"
    dest3.with_name("blob3.bin.part").write_bytes(data)
    download(f"{server.base}/blob.bin", dest3)
    assert dest3.read_bytes() == data
    # a server that ignores Range makes the client start over instead of appending a duplicate
    server.ranges = False
    dest2 = tmp_path / "blob2.bin"
    dest2.with_name("blob2.bin.part").write_bytes(data[:3000])
    download(f"{server.base}/blob.bin", dest2, size=len(data))
    assert dest2.read_bytes() == data


def test_offline_fails_fast_naming_the_url(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused, as when offline
    t0 = time.time()
    with pytest.raises(DownloadError, match=rf"cannot reach http://127.0.0.1:{port}/bench.zip .*offline"):
        fetch(_source(b"x"), tmp_path, base_url=f"http://127.0.0.1:{port}", timeout=2)
    assert time.time() - t0 < 5


def test_cli_errors(server, tmp_path, capsys):
    assert main(["Manga109", f"root={tmp_path}"]) == 2
    assert "manga109.org" in capsys.readouterr().err
    assert main(["NoSuchSet", f"root={tmp_path}"]) == 2
    # the real table entry, served from the local mirror: a 404 is a clear error, not a hang
    assert main(["Set5", f"root={tmp_path}", f"base_url={server.base}", "timeout=2"]) == 1
    err = capsys.readouterr().err
    assert f"{server.base}/benchmark.tar" in err and "404" in err
    assert not Path(tmp_path / "Set5").exists()


def test_settings_are_key_value_and_old_flags_get_the_new_spelling(tmp_path, monkeypatch):
    import src.data.download as D

    calls = []
    monkeypatch.setattr(D, "fetch", lambda source, root, base_url, timeout, force, keep: calls.append(
        (source.name if hasattr(source, "name") else source, root, base_url, timeout, force, keep)))
    assert main(["Set5", f"root={tmp_path}", "timeout=3", "force=true", "delete_archives=true"]) == 0
    assert [c[1:] for c in calls] == [(tmp_path, None, 3.0, True, False)]
    with pytest.raises(SystemExit, match=rf"'--root': settings are key=value, not --flags; write root={tmp_path}$"):
        main(["Set5", "--root", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"'--delete-archives': .* write delete_archives=true$"):
        main(["Set5", "--delete-archives"])
    with pytest.raises(SystemExit, match=r"'--base-url=http://m': .* write base_url=http://m$"):
        main(["Set5", "--base-url=http://m"])
    with pytest.raises(SystemExit, match=r"force='yes': allowed values are true and false"):
        main(["Set5", "force=yes"])
    with pytest.raises(SystemExit, match=r"'rot' is not a setting; settings: root, base_url, timeout"):
        main(["Set5", "rot=/x"])
