import dataclasses
import functools
import hashlib
import http.server
import pathlib
import threading

import numpy as np
import pytest

from bitkeras import BiTBackbone, CorruptWeightsError, WeightsUnavailableError, files
from bitkeras.io import presets
from bitkeras.models.architecture import Architecture
from tests.helpers import TINY, reference


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests = []
    truncate = False

    def do_GET(self):
        _Handler.requests.append(self.path)
        if not _Handler.truncate:
            return super().do_GET()
        body = (self.directory + self.path)
        with open(body, "rb") as source:
            data = source.read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])

    def log_message(self, *args):
        pass


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """A local HTTP server standing in for the public bucket, holding one tiny model."""
    served = tmp_path / "bucket"
    (served / "test").mkdir(parents=True)
    arrays = reference.checkpoint_arrays(TINY["block_units"], TINY["width_factor"], num_classes=5)
    reference.write_checkpoint(served / "test" / "tiny.npz", arrays)
    handler = functools.partial(_Handler, directory=str(served))
    _Handler.requests, _Handler.truncate = [], False
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(presets, "BUCKET_URL", f"http://127.0.0.1:{server.server_port}/")
    monkeypatch.setenv("BITKERAS_CACHE_DIR", str(tmp_path / "cache"))
    preset = presets.Preset("BiT-T-tiny", Architecture(**TINY).config, "test/tiny.npz", "test")
    monkeypatch.setitem(presets.PRESETS, preset.name, preset)
    yield arrays
    server.shutdown()
    server.server_close()


def test_auto_downloads_once_into_the_cache(bucket, tmp_path, capsys):
    first = BiTBackbone.from_preset("BiT-T-tiny", weights="auto")
    assert "Downloading http://127.0.0.1" in capsys.readouterr().out
    cached = tmp_path / "cache" / "test" / "tiny.npz"
    with np.load(cached) as archive:
        np.testing.assert_array_equal(archive["resnet/group_norm/beta"], bucket["resnet/group_norm/beta"])
    second = BiTBackbone.from_preset("BiT-T-tiny", weights="auto")
    assert _Handler.requests == ["/test/tiny.npz"]
    images = np.random.default_rng(0).uniform(0, 1, (1, 32, 32, 3)).astype(np.float32)
    expected, _, _ = reference.forward(bucket, images, TINY["block_units"])
    np.testing.assert_allclose(second(images), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(first(images), second(images))


def test_interrupted_download_leaves_nothing_behind(bucket, tmp_path):
    _Handler.truncate = True
    with pytest.raises((CorruptWeightsError, WeightsUnavailableError)):
        BiTBackbone.from_preset("BiT-T-tiny", weights="auto")
    leftovers = list((tmp_path / "cache").rglob("*"))
    assert [p for p in leftovers if p.is_file()] == []


def test_a_published_sha256_is_checked_before_the_file_enters_the_cache(
        bucket, tmp_path, monkeypatch):
    served = tmp_path / "bucket" / "test" / "tiny.npz"
    right = hashlib.sha256(served.read_bytes()).hexdigest()
    wrong = presets.Preset("BiT-T-tiny", Architecture(**TINY).config, "test/tiny.npz", "test",
                           sha256="0" * 64)
    monkeypatch.setitem(presets.PRESETS, wrong.name, wrong)
    with pytest.raises(CorruptWeightsError, match=f"SHA-256 {right}, not the published 0000"):
        BiTBackbone.from_preset("BiT-T-tiny", weights="auto")
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []
    monkeypatch.setitem(presets.PRESETS, wrong.name,
                        dataclasses.replace(wrong, sha256=right))
    BiTBackbone.from_preset("BiT-T-tiny", weights="auto")
    assert (tmp_path / "cache" / "test" / "tiny.npz").is_file()


def test_corrupt_cached_file_says_to_delete_it(bucket, tmp_path):
    cached = tmp_path / "cache" / "test" / "tiny.npz"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CorruptWeightsError, match=f"delete {cached} and download it again"):
        BiTBackbone.from_preset("BiT-T-tiny", weights="auto")


def test_offline_fails_fast_and_says_where_to_put_the_file(bucket, tmp_path, monkeypatch):
    # A port nothing listens on: the connection is refused, as offline.
    monkeypatch.setattr(presets, "BUCKET_URL", "http://127.0.0.1:9/")
    with pytest.raises(WeightsUnavailableError) as error:
        BiTBackbone.from_preset("BiT-T-tiny", weights="auto")
    message = str(error.value)
    assert "could not download http://127.0.0.1:9/test/tiny.npz" in message
    assert str(tmp_path / "cache" / "test" / "tiny.npz") in message
    assert "BITKERAS_CACHE_DIR" in message and "weights='/path/to/tiny.npz'" in message


def test_non_bit_archive_is_refused(tmp_path):
    from bitkeras.io.weights import verify_npz

    path = tmp_path / "other.npz"
    np.savez(path, kernel=np.zeros(3))
    with pytest.raises(CorruptWeightsError, match="is not a BiT checkpoint"):
        verify_npz(path)


def test_from_preset_loads_the_presets_weights_unless_told_not_to(bucket, monkeypatch, tmp_path):
    from bitkeras.io.weights import resolve_weights

    images = np.random.default_rng(0).uniform(0, 1, (1, 32, 32, 3)).astype(np.float32)
    expected, _, _ = reference.forward(bucket, images, TINY["block_units"])
    loaded = BiTBackbone.from_preset("BiT-T-tiny")  # as keras-hub's from_preset: weights
    np.testing.assert_allclose(loaded(images), expected, rtol=1e-4, atol=1e-4)
    for unloaded in (BiTBackbone.from_preset("BiT-T-tiny", weights=None),
                     BiTBackbone.from_preset("BiT-T-tiny", load_weights=False)):
        assert not np.allclose(unloaded(images), expected, rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError, match="load_weights=False with weights='auto': give one"):
        BiTBackbone.from_preset("BiT-T-tiny", weights="auto", load_weights=False)
    assert _Handler.requests == ["/test/tiny.npz"]
    assert resolve_weights(presets.get_preset("R50x1"), "default") is None  # an architecture
    shipped = presets.get_preset("BiT-Glyphs-R14x0.5")
    assert shipped.url is None and "char_A" in shipped.class_names
    monkeypatch.setattr(presets, "SAVED_MODELS", tmp_path)
    with pytest.raises(WeightsUnavailableError, match="pip install -e"):
        resolve_weights(shipped, "default")


def test_a_released_preset_offline_says_what_to_download_and_where(monkeypatch, tmp_path):
    import socket

    def offline(*args, **kwargs):
        raise socket.gaierror("no network in this test")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    monkeypatch.setenv("BITKERAS_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(WeightsUnavailableError) as caught:
        BiTBackbone.from_preset("BiT-M-R50x1")
    message = str(caught.value)
    assert "BiT-M-R50x1.npz" in message and str(tmp_path / "cache") in message


def test_the_tests_keep_a_cache_folder_of_their_own():
    # conftest gives each session a new folder: no test reads or writes a user's cache.
    folder = files.cache_dir()
    assert folder.name.startswith("bitkeras-test-cache-") and folder.parent != pathlib.Path.home()
