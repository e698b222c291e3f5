"""Atomic file writes: a kill at any moment leaves the old file or the new one, never half of one.

Every file bitkeras writes goes through `atomic_path`: the writer fills a
temporary file beside the target (same folder, so the same file system), and
`os.replace` swaps it in at the end, which POSIX and Windows do atomically.
A writer that raises leaves the target untouched and its temporary removed; a
process killed mid-write leaves at most a `.partial-*` file beside it.
"""

import contextlib
import math
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

    Missing parent folders are created; a read-only `path`, or a folder that
    cannot be written, raises an error naming `path` before anything is
    written. Temporaries left in the folder by killed writers are removed
    first (`sweep_partials`).

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
    _writable_folder(path)
    sweep_partials(path.parent)
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


def _writable_folder(path):
    """Creates `path`'s folder if missing; raises, naming `path`, where it cannot be written."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise type(error)(error.errno, f"cannot write {str(path)!r}: its folder {str(folder)!r} "
                                       f"cannot be created ({error.strerror})") from error
    if not folder.is_dir():
        raise NotADirectoryError(f"cannot write {str(path)!r}: {str(folder)!r} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {str(path)!r}: its folder {str(folder)!r} is "
                              f"read-only; make it writable or write elsewhere")


def sweep_partials(folder):
    """Removes what killed writers left in `folder`: `.NAME.partial-PID...` entries whose
    process no longer runs on this machine (a running one's are its work in progress)."""
    try:
        entries = list(pathlib.Path(folder).iterdir())
    except OSError:
        return
    for entry in entries:
        pid = _partial_pid(entry.name)
        if pid is None or _running(pid):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()


def _partial_pid(name):
    """The writer's process id in a temporary's name, or None for any other name."""
    if not name.startswith(".") or PARTIAL_MARK not in name:
        return None
    digits = name.rsplit(PARTIAL_MARK, 1)[1].split(".", 1)[0]
    return int(digits) if digits.isdigit() else None


def _running(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: running
        return True
    return True


def check_output_folder(path, option="--out"):
    """Raises, naming `option` and `path`, unless `path` is a folder that can be written or
    made: what a job checks before any work, so that none is lost at the end."""
    path = pathlib.Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{option} {str(path)!r} is a file, not a folder: name a folder "
                              f"(it is created if missing)")
    existing = next(folder for folder in (path, *path.parents) if folder.exists())
    if not existing.is_dir():
        raise NotADirectoryError(f"{option} {str(path)!r} cannot be made: {str(existing)!r} "
                                 f"is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{option} {str(path)!r} cannot be written: {str(existing)!r} "
                              f"is read-only")


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
    """`save` and `save_weights` that write atomically (see `atomic_path`), and a
    `load_weights` that loads all or nothing.

    Mixed into bitkeras's Keras models, ahead of `keras.Model`. Keras's own
    checks of the file name and of `overwrite` still apply.
    """

    def load_weights(self, filepath, skip_mismatch=False, **kwargs):
        """Keras's `load_weights`, all or nothing: when it fails (a file of another network,
        a damaged one) the model's weights and optimizer state are as they were, and a
        `.weights.h5` file of another network is refused in a few lines naming both."""
        variables = list(self.variables)
        if getattr(self, "optimizer", None) is not None and self.optimizer.built:
            known = {id(variable) for variable in variables}
            variables += [v for v in self.optimizer.variables if id(v) not in known]
        before = [variable.numpy() for variable in variables]
        try:
            return super().load_weights(filepath, skip_mismatch=skip_mismatch, **kwargs)
        except BaseException as error:
            for variable, value in zip(variables, before):
                variable.assign(value)
            mismatch = None if skip_mismatch else _mismatch(filepath, self)
            if mismatch is None:
                raise
            raise ValueError(mismatch) from error

    def save(self, filepath, overwrite=True, **kwargs):
        return _write_keras_file(super().save, filepath, overwrite, _keras_suffix(filepath),
                                 **kwargs)

    def save_weights(self, filepath, overwrite=True, **kwargs):
        suffix = _keras_suffix(filepath)
        return _write_keras_file(super().save_weights, filepath, overwrite,
                                 suffix if suffix == ".weights.h5" else None, **kwargs)


def _mismatch(filepath, model):
    """A few lines on how a `.weights.h5` file's arrays differ from `model`'s, or None where
    they do not (or the file cannot be read: its own error says more)."""
    import collections

    import h5py

    if not str(filepath).endswith(".weights.h5"):
        return None
    shapes = []
    try:
        with h5py.File(filepath, "r") as file:
            file.visititems(lambda name, item: shapes.append(tuple(item.shape)) if isinstance(
                item, h5py.Dataset) and not name.startswith("optimizer") else None)
    except (OSError, ValueError):
        return None
    ours = [tuple(weight.shape) for weight in model.weights]
    only_file = collections.Counter(shapes) - collections.Counter(ours)
    only_model = collections.Counter(ours) - collections.Counter(shapes)
    if not (only_file or only_model):
        return None

    def listed(counter):
        return ", ".join(str(shape) for shape in list(counter.elements())[:4]) or "none"

    def numbers(all_shapes):
        return sum(int(math.prod(shape)) for shape in all_shapes)

    return (f"{str(filepath)!r} holds the weights of another network: {len(shapes)} arrays "
            f"({numbers(shapes):,} numbers), where {model.name} has {len(ours)} "
            f"({numbers(ours):,}). Shapes only in the file: {listed(only_file)}; only in "
            f"{model.name}: {listed(only_model)}. {model.name} is unchanged.")


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

