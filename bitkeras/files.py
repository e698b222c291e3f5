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

PARTIAL_MARK = ".partial-"
"""In the name of a file being written; such files are never the finished product."""


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yields a temporary path to write; on success it replaces `path`.

    `suffix`: the temporary's ending, for writers that insist on one (Keras
    wants ".keras" or ".weights.h5"); by default the target's own suffix.
    """
    path = pathlib.Path(path)
    if suffix is None:
        suffix = "".join(path.suffixes[-1:])
    temporary = path.with_name(f".{path.name}{PARTIAL_MARK}{os.getpid()}{suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise


def write_text(path, text):
    """Writes `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as temporary:
        pathlib.Path(temporary).write_text(text, encoding="utf-8")


def _remove(path):
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def _keras_suffix(path):
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
        suffix = _keras_suffix(filepath)
        if suffix is None or not isinstance(filepath, (str, os.PathLike)):
            return super().save(filepath, overwrite=overwrite, **kwargs)
        if not overwrite and os.path.exists(filepath):
            return super().save(filepath, overwrite=overwrite, **kwargs)  # Keras asks
        with atomic_path(filepath, suffix) as temporary:
            super().save(temporary, overwrite=True, **kwargs)

    def save_weights(self, filepath, overwrite=True, **kwargs):
        suffix = _keras_suffix(filepath)
        if suffix != ".weights.h5" or not isinstance(filepath, (str, os.PathLike)):
            return super().save_weights(filepath, overwrite=overwrite, **kwargs)
        if not overwrite and os.path.exists(filepath):
            return super().save_weights(filepath, overwrite=overwrite, **kwargs)
        with atomic_path(filepath, suffix) as temporary:
            super().save_weights(temporary, overwrite=True, **kwargs)


def save_figure(figure, path, **kwargs):
    """Saves a matplotlib figure to `path` atomically (format from the suffix)."""
    path = pathlib.Path(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format=path.suffix.lstrip(".") or None, **kwargs)

