"""core/fetch/download.py against a local stand-in for the Hub (tests/hub_server.py): a clean download,
resume after a dropped line and after a cancel (the server's log shows what was sent twice), the refusals
(wrong sha256, 404, gated, disk space, redirect loops, offline, pickles), and a server that sends too much."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import huggingface_hub.constants
import pytest

from core.fetch import stream
from core.fetch.download import DownloadError, DownloadProgress, fetch
from core.fetch.hub import Backoff
from core.fetch.part_files import CHUNK
from tests.hub_server import TOKEN, hub_server_fixture  # noqa: F401 - the hub_server fixture

REPO = "someone/model"
FILE = "unet/model.safetensors"


def safetensors_like(size: int) -> bytes:
    """Bytes that start the way a .safetensors file does (not a pickle), the rest random."""
    return b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + os.urandom(size - 16)


@pytest.fixture
def data(hub_server) -> bytes:
    blob = safetensors_like(3 * 1024 * 1024)
    hub_server.add_file(REPO, FILE, blob)
    return blob


def get(hub, dest: Path, file: str = FILE, **options) -> Path:
    return fetch(REPO, file, dest, endpoint=hub.url, token=options.pop("token", False), **options)


def refused(hub, dest: Path, file: str = FILE, **options) -> DownloadError:
    with pytest.raises(DownloadError) as caught:
        get(hub, dest, file, **options)
    return caught.value


def gets(hub) -> list:
    return [e for e in hub.log if e.method == "GET"]


def test_a_clean_download_lands_under_its_name_and_is_reused(hub_server, data, tmp_path):
    reports: list[DownloadProgress] = []
    path = get(hub_server, tmp_path, on_progress=reports.append)
    assert path == tmp_path / "model.safetensors" and path.read_bytes() == data
    assert os.listdir(tmp_path) == ["model.safetensors"]      # no part, info or lock file left behind
    assert reports[-1].done == reports[-1].total == len(data) and reports[-1].rate > 0
    assert hub_server.log[0].method == "HEAD" and "/resolve/main/" in hub_server.log[0].path
    assert hub_server.bytes_sent() == len(data)
    assert get(hub_server, tmp_path, save_as=None) == path     # again: checked, not fetched
    assert hub_server.bytes_sent() == len(data)


def test_a_dropped_connection_resumes_without_fetching_finished_bytes(hub_server, data, tmp_path):
    hub_server.drop_after = dropped_at = int(len(data) * 0.4)
    path = get(hub_server, tmp_path)
    assert path.read_bytes() == data
    first, second = gets(hub_server)
    assert first.range_start is None and first.sent == dropped_at
    assert second.range_start == first.sent
    resent = hub_server.bytes_sent() - len(data)
    assert resent == 0 <= CHUNK


def test_an_expired_cdn_address_is_asked_for_again(hub_server, data, tmp_path):
    hub_server.cdn_forbidden_once = True
    assert get(hub_server, tmp_path).read_bytes() == data
    assert [e.method for e in hub_server.log] == ["HEAD", "GET", "HEAD", "GET"]     # the 403, then the Hub again
    assert hub_server.bytes_sent() == len(data)


def test_through_a_proxy_huggingface_hubs_session_reads_it(hub_server, data, tmp_path, monkeypatch):
    monkeypatch.setattr(stream, "proxied", lambda url: True)    # no proxy here: take its path anyway
    hub_server.drop_after = dropped_at = int(len(data) * 0.4)
    assert get(hub_server, tmp_path).read_bytes() == data
    assert [e.range_start for e in gets(hub_server)] == [None, dropped_at]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="makes its certificate with openssl")
def test_a_cdn_over_https_is_read_with_the_same_trust_as_huggingface_hub(hub_server, data, tmp_path, monkeypatch):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    hub_server.cdn.socket = tls.wrap_socket(hub_server.cdn.socket, server_side=True)
    hub_server.cdn_url = hub_server.cdn_url.replace("http:", "https:")
    dest = tmp_path / "models"
    stream.tls.cache_clear()
    try:
        error = refused(hub_server, dest)          # a certificate nobody vouches for: refused, not retried
        assert error.reason == "network" and "does not trust" in str(error) and "SSL_CERT_FILE" in str(error)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))           # as httpx2 reads it
        stream.tls.cache_clear()
        assert get(hub_server, dest).read_bytes() == data
    finally:
        stream.tls.cache_clear()


def test_proxies_are_read_from_the_environment(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "https_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "cdn.example")
    assert stream.proxied("https://huggingface.co/x/resolve/main/y")
    assert not stream.proxied("https://cdn.example/abc")
    assert not stream.proxied("http://127.0.0.1:8000/x")      # no HTTP_PROXY


def test_cancel_on_a_slow_server_keeps_the_part_and_a_rerun_resumes(hub_server, data, tmp_path):
    hub_server.chunk_delay = 0.01        # 48 chunks of 64 KiB: about half a second
    cancel = threading.Event()

    def on_progress(p: DownloadProgress) -> None:
        if p.done > len(data) // 4:
            cancel.set()

    error = refused(hub_server, tmp_path, cancel=cancel, on_progress=on_progress)
    assert error.reason == "cancelled"
    assert not (tmp_path / "model.safetensors").exists()
    kept = (tmp_path / ".model.safetensors.part").stat().st_size
    assert len(data) // 4 < kept < len(data)
    hub_server.chunk_delay = 0
    assert get(hub_server, tmp_path).read_bytes() == data
    assert gets(hub_server)[-1].range_start == kept


def test_one_download_of_a_file_at_a_time(hub_server, data, tmp_path):
    hub_server.chunk_delay = 0.01
    started, results = threading.Event(), []
    first = threading.Thread(target=lambda: results.append(get(hub_server, tmp_path, on_progress=lambda p: started.set())))
    first.start()
    started.wait(5)
    error = refused(hub_server, tmp_path)
    first.join()
    assert error.reason == "refused" and "being downloaded" in str(error)
    assert results[0].read_bytes() == data


def test_a_new_commit_that_leaves_the_file_alone_still_resumes(hub_server, data, tmp_path):
    cancel = threading.Event()
    hub_server.chunk_delay = 0.01
    refused(hub_server, tmp_path, cancel=cancel, on_progress=lambda p: p.done > len(data) // 4 and cancel.set())
    kept = (tmp_path / ".model.safetensors.part").stat().st_size
    hub_server.chunk_delay = 0
    hub_server.files[(REPO, "main", FILE)].commit = "f" * 40      # a README edit, say
    assert get(hub_server, tmp_path).read_bytes() == data
    assert gets(hub_server)[-1].range_start == kept


def test_a_part_of_an_older_version_is_not_resumed(hub_server, data, tmp_path):
    (tmp_path / ".model.safetensors.part").write_bytes(b"the start of last year's version")
    (tmp_path / ".model.safetensors.part.json").write_text(json.dumps(
        {"repo": REPO, "file": FILE, "commit": "a" * 40, "sha256": "b" * 64, "git_sha1": None, "size": len(data)}))
    assert get(hub_server, tmp_path).read_bytes() == data
    assert gets(hub_server)[0].range_start is None


def test_a_wrong_sha256_is_refused_and_nothing_is_kept(hub_server, data, tmp_path):
    hub_server.wrong_sha256 = True
    error = refused(hub_server, tmp_path)
    assert error.reason == "hash_mismatch" and "0" * 64 in str(error)
    assert os.listdir(tmp_path) == []


def test_a_server_sending_more_than_announced_is_cut_at_the_size(hub_server, data, tmp_path):
    hub_server.extra_bytes = 100_000
    assert get(hub_server, tmp_path).read_bytes() == data


def test_small_files_kept_in_git_are_checked_against_their_etag(hub_server, tmp_path):
    hub_server.add_file(REPO, "model_index.json", b'{"_class_name": "x"}', lfs=False)
    assert get(hub_server, tmp_path, "model_index.json").read_bytes() == b'{"_class_name": "x"}'


@pytest.mark.parametrize("repo_file, words", [((REPO, "missing.safetensors"), "has no file"),
                                               (("nobody/nothing", FILE), "no repository"),
                                               ((REPO, FILE, "v9"), "no revision")])
def test_not_found(hub_server, data, tmp_path, repo_file, words):
    repo, file, *revision = repo_file
    with pytest.raises(DownloadError) as caught:
        fetch(repo, file, tmp_path, revision=(revision or ["main"])[0], endpoint=hub_server.url, token=False)
    assert caught.value.reason == "not_found" and words in str(caught.value) and "404" in str(caught.value)
    assert os.listdir(tmp_path) == []


def test_a_gated_repo_asks_for_a_login_and_never_shows_the_token(hub_server, tmp_path):
    hub_server.add_file(REPO, "gated.safetensors", safetensors_like(4096), gated=True)
    error = refused(hub_server, tmp_path, "gated.safetensors", token="hf_wrong_secret")
    assert error.reason == "unauthorized" and "hf auth login" in str(error) and "HF_TOKEN" in str(error)
    assert "hf_wrong_secret" not in str(error)
    assert get(hub_server, tmp_path, "gated.safetensors", token=TOKEN).exists()


def test_too_little_disk_space_is_refused_before_downloading(hub_server, data, tmp_path, monkeypatch):
    real = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real._replace(free=10_000_000))
    error = refused(hub_server, tmp_path)
    assert error.reason == "disk_full" and "10.0 MB" in str(error) and "3.1 MB" in str(error)
    assert gets(hub_server) == []


@pytest.mark.parametrize("where", ["hub", "cdn"])
def test_a_redirect_loop_is_refused(hub_server, data, tmp_path, where):
    hub_server.redirect_loop = where
    error = refused(hub_server, tmp_path)
    assert error.reason == "network" and "loop" in str(error)
    assert not (tmp_path / "model.safetensors").exists()


def test_no_answer_at_all_is_retried_then_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(Backoff, "FIRST_WAIT", 0.01)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))        # a port nobody listens on
    endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
    with pytest.raises(DownloadError) as caught:
        fetch(REPO, FILE, tmp_path, endpoint=endpoint, token=False)
    closed.close()
    assert caught.value.reason == "network" and "cannot reach" in str(caught.value) and "4 tries" in str(caught.value)


def test_offline_mode_asks_nothing(hub_server, data, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    error = refused(hub_server, tmp_path)
    assert error.reason == "offline" and "HF_HUB_OFFLINE" in str(error)
    assert hub_server.log == []


def test_pickles_are_refused_by_name_and_by_their_bytes(hub_server, tmp_path):
    hub_server.add_file(REPO, "model.ckpt", b"PK\x03\x04 a zip")
    assert refused(hub_server, tmp_path, "model.ckpt").reason == "refused"
    assert hub_server.log == []      # by name: not even asked about
    hub_server.add_file(REPO, "disguised.safetensors", b"PK\x03\x04" + os.urandom(5000))
    assert refused(hub_server, tmp_path, "disguised.safetensors").reason == "refused"
    assert os.listdir(tmp_path) == []


def test_a_different_file_under_the_same_name_is_not_overwritten(hub_server, data, tmp_path):
    mine = tmp_path / "model.safetensors"
    mine.write_bytes(b"the user's own file")
    assert refused(hub_server, tmp_path).reason == "refused"
    assert mine.read_bytes() == b"the user's own file"
    assert hashlib.sha256(get(hub_server, tmp_path, save_as="other.safetensors").read_bytes()).digest() == \
        hashlib.sha256(data).digest()


@pytest.mark.parametrize("name", ["../escape.safetensors", ".hidden.safetensors", "a/b.safetensors"])
def test_save_as_must_be_a_plain_name(hub_server, data, tmp_path, name):
    assert refused(hub_server, tmp_path, save_as=name).reason == "refused"


def test_no_telemetry_reaches_the_hub(hub_server, tmp_path, monkeypatch):
    """Only the download's own requests: no agent registry fetch, no torch version in the user agent."""
    import huggingface_hub.constants

    import core.fetch.hub  # noqa: F401 - importing it is what turns telemetry off

    monkeypatch.undo()      # the fixture's own switch off: the module's must hold alone
    assert huggingface_hub.constants.HF_HUB_DISABLE_TELEMETRY is True
    hub_server.add_file("t/m", "m.safetensors", b"\0" * 1000)
    fetch("t/m", "m.safetensors", tmp_path, endpoint=hub_server.url)
    paths = [entry.path for entry in hub_server.log]
    assert not [path for path in paths if "/resolve/" not in path and not path.startswith("/cdn/")], paths
