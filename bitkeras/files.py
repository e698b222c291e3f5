"""Atomic file writes: a kill at any moment leaves the old file or the new one, never half of one.

Every file bitkeras writes goes through `atomic_path`: the writer fills a
temporary file beside the target (same folder, so the same file system), and
`os.replace` swaps it in at the end, which POSIX and Windows do atomically.
A writer that raises leaves the target untouched and its temporary removed; a
process killed mid-write leaves at most a `.partial-*` file beside it.
"""

import contextlib
import os
import pathlib
import shutil
import stat

PARTIAL_MARK = ".partial-"
"""In the name of a file being written; such files are never the finished product."""

CACHE_ENV = "BITKERAS_CACHE_DIR"


def cache_dir():
    """bitkeras's cache folder: `$BITKERAS_CACHE_DIR`, else `~/.cache/bitkeras`."""
    return pathlib.Path(
        os.environ.get(CACHE_ENV) or pathlib.Path.home() / ".cache" / "bitkeras"
    ).expanduser()


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yields a temporary path to write; on success it replaces `path`.

    A read-only `path` raises PermissionError before anything is written.

    `suffix`: the temporary's ending, for writers that insist on one (Keras
    wants ".keras" or ".weights.h5"); by default the target's own suffix.
    """
    path = pathlib.Path(path)
    if path.is_file() and not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        # Renaming over it would succeed (the folder is writable), even as root: honour
        # the mode the user gave the file.
        raise PermissionError(
            f"{str(path)!r} is read-only; make it writable (chmod u+w) or write elsewhere"
        )
    if suffix is None:
        suffix = "".join(path.suffixes[-1:])
    temporary = path.with_name(f".{path.name}{PARTIAL_MARK}{os.getpid()}{suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        if temporary.is_dir():  # a folder written in one go, such as an extracted module
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            temporary.unlink(missing_ok=True)
        raise


def write_text(path, text):
    """Writes `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def _keras_suffix(path):
    """The ending Keras keys its format on, or None (not a path, or a name Keras refuses)."""
    if not isinstance(path, (str, os.PathLike)):
        return None
    name = pathlib.Path(path).name
    for suffix in (".weights.h5", ".keras", ".h5"):
        if name.endswith(suffix):
            return suffix
    return None


class AtomicSaveMixin:
    """`save` and `save_weights` that write atomically (see `atomic_path`).

    Mixed into bitkeras's Keras models, ahead of `keras.Model`. Keras's own
    checks of the file name and of `overwrite` still apply.
    """

    def save(self, filepath, overwrite=True, **kwargs):
        return _write_keras_file(super().save, filepath, overwrite, _keras_suffix(filepath),
                                 **kwargs)

    def save_weights(self, filepath, overwrite=True, **kwargs):
        suffix = _keras_suffix(filepath)
        return _write_keras_file(super().save_weights, filepath, overwrite,
                                 suffix if suffix == ".weights.h5" else None, **kwargs)


def _write_keras_file(write, filepath, overwrite, suffix, **kwargs):
    """`write(filepath, ...)` through `atomic_path`, or as Keras does it where that cannot apply.

    Keras handles names it will refuse (no `suffix`) and declined overwrites
    itself (it asks first).
    """
    if suffix is None or (not overwrite and os.path.exists(filepath)):
        return write(filepath, overwrite=overwrite, **kwargs)
    with atomic_path(filepath, suffix) as temporary:
        write(temporary, overwrite=True, **kwargs)


def save_figure(figure, path, **kwargs):
    """Saves a matplotlib figure to `path` atomically (format from the suffix)."""
    path = pathlib.Path(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format=path.suffix.lstrip(".") or None, **kwargs)

