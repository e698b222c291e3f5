"""Released weights on disk: the cache folder, downloads, and file checks.

The cache folder is `$BITKERAS_CACHE_DIR`, else `~/.cache/bitkeras`; a
preset's file keeps its bucket path there (e.g. `distill/R50x1_224.npz`).
"""

import hashlib
import http.client
import pathlib
import urllib.error
import urllib.request
import zipfile

import keras

from bitkeras import files
from bitkeras.files import CACHE_ENV, cache_dir  # the folder that holds downloaded weights

DOWNLOAD_TIMEOUT_SECONDS = 30
_CHUNK_BYTES = 1 << 20


class WeightsUnavailableError(OSError):
    """Weights that could not be found locally nor downloaded."""


class CorruptWeightsError(ValueError):
    """A weights file that is truncated, damaged or not a BiT `.npz`."""


def is_safetensors(path):
    """Whether `path` starts as a safetensors file does (a header length, then JSON)."""
    try:
        with open(path, "rb") as file:
            head = file.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{"


def resolve_weights(preset, weights):
    """The local path of the weights a user asked for, or None for no weights.

    `weights`: None (random initialisation), a path to a `.npz` file, "auto"
    for the preset's own file (shipped with bitkeras, or released: cached,
    else downloaded and verified), or "default": "auto" for presets with
    weights, None for a bare architecture.
    """
    if weights == "default":
        weights = "auto" if preset.has_weights else None
    if weights is None:
        return None
    if weights == "auto":
        if preset.weights_file is None:
            raise ValueError(
                f"preset {preset.name!r} is a bare architecture with no released weights: "
                f"use weights=None, a path to a .npz file, or a released preset such as "
                f"'BiT-M-{preset.name}'"
            )
        if preset.shipped:
            return _shipped(preset)
        return fetch(preset.weights_file, preset.url, preset.sha256)
    path = pathlib.Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file {str(weights)!r} does not exist: pass weights=None, 'auto', "
            f"or the path of a BiT .npz checkpoint"
        )
    return path


def _shipped(preset):
    path = preset.shipped_path
    if not path.is_file():
        raise WeightsUnavailableError(
            f"the weights of {preset.name!r} ship in the bitkeras repository at "
            f"saved_models/{preset.weights_file}, which is not at {path}: install bitkeras "
            f"from a clone of the repository (pip install -e .), or pass "
            f"weights='/path/to/model.npz'"
        )
    verify_npz(path)
    return path


def fetch(relative_path, url, sha256=None):
    """The cached copy of a released file, downloading it first if needed.

    `sha256`: the file's published hash, checked on the download before it
    is renamed into the cache.
    """
    target = cache_dir() / relative_path
    if target.is_file():
        verify_npz(target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        download(url, target, sha256)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        raise WeightsUnavailableError(
            f"could not download {url} ({getattr(error, 'reason', error)}). On a machine "
            f"with internet access download that file and put it at {target} (or set "
            f"{CACHE_ENV} to the folder that holds {relative_path}), or pass "
            f"weights='/path/to/{pathlib.Path(relative_path).name}'."
        ) from error
    return target


def download(url, target, sha256=None):
    """Downloads `url` to `target` with a progress bar, atomically and verified.

    The bytes go to a temporary file beside `target`, which is checked (length,
    the published SHA-256 if there is one, zip CRCs, BiT keys) and only then
    renamed: an interrupted download never leaves a partial file at `target`.
    """
    target = pathlib.Path(target)
    print(f"Downloading {url} to {target}")
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response:
        expected = response.headers.get("Content-Length")
        expected = int(expected) if expected else None
        progress = keras.utils.Progbar(expected, unit_name="byte")
        with files.atomic_path(target) as temporary:
            received = 0
            digest = hashlib.sha256()
            with open(temporary, "wb") as out:
                while chunk := response.read(_CHUNK_BYTES):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    progress.update(received)
            if expected is not None and received != expected:
                raise CorruptWeightsError(
                    f"download of {url} stopped after {received} of {expected} bytes: "
                    f"try again"
                )
            if sha256 is not None and digest.hexdigest() != sha256:
                raise CorruptWeightsError(
                    f"download of {url} has SHA-256 {digest.hexdigest()}, not the published "
                    f"{sha256}: the file is damaged or another one; try again"
                )
            verify_npz(temporary, source=url)


def verify_npz(path, source=None):
    """Checks that `path` is an intact `.npz` archive of BiT (`resnet/...`) arrays."""
    name = source or str(path)
    fix = f"delete {path} and download it again" if source is None else "try again"
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
            members = archive.namelist()
    except (zipfile.BadZipFile, OSError) as error:
        raise CorruptWeightsError(f"{name} is not a readable .npz archive ({error}): {fix}") from error
    if damaged is not None:
        raise CorruptWeightsError(f"{name} is damaged (bad CRC in {damaged}): {fix}")
    if not members or not all(member.startswith("resnet/") for member in members):
        raise CorruptWeightsError(
            f"{name} is not a BiT checkpoint: its arrays should all be named 'resnet/...', "
            f"found {members[:3]}"
        )
