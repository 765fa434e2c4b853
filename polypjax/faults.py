"""Faults of the machine a run meets (a full disk, a denied permission, a file removed under it),
told in one line.

Every entry point (`polypjax.main`, `python -m polypjax.data`, `python -m polypjax.review`) prints
`error: <describe(e)>` for such a fault instead of a traceback: the fault is not a bug of the code,
and what the user needs is the file and what to do. Writers name the file they write
(`writing`), since a write() that fails on a full disk raises an OSError without one. A full disk
during an asynchronous checkpoint also makes orbax, tensorstore and asyncio print tracebacks from
their own threads before the run stops; `LibraryDiskFullFilter` and `install_quiet_hooks` keep those
out of the entry point's output (docs/faults.md lists every fault and what the user sees).
"""
from __future__ import annotations

import contextlib
import errno
import logging
import pathlib
import re
import sys
import threading

_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = "No space left on device"
# A path in the message of a library error that carries no errno (tensorstore quotes it, TensorFlow
# does not); not a path that continues a word, such as TensorFlow's device names ("_device_/job:...").
_QUOTED_PATH = re.compile(r'"(/[^"]+)"')
_BARE_PATH = re.compile(r"(?<![\w/])(/[^\s;\"',]+)")
_CHECKPOINT_TMP = ".orbax-checkpoint-tmp"


def _chain(error: BaseException | None):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def disk_full(error: BaseException | None) -> bool:
    """Whether `error` (or one it was raised from) says the disk is full. The writers differ: Python
    raises OSError(ENOSPC), TensorBoard's event writer ResourceExhaustedError, tensorstore (orbax) a
    ValueError quoting the OS message."""
    for e in _chain(error):
        if isinstance(e, OSError) and e.errno in _DISK_FULL_ERRNOS:
            return True
        if type(e).__name__ == "ResourceExhaustedError" or _DISK_FULL_TEXT in str(e):
            return True
    return False


def _path_in_message(text: str) -> str | None:
    found = _QUOTED_PATH.search(text) or _BARE_PATH.search(text)
    if found is None:
        return None
    path = found.group(1)
    if _CHECKPOINT_TMP in path:  # orbax's temporary folder of the checkpoint being written
        path = path[:path.index(_CHECKPOINT_TMP)]
    return path


def _os_error(error: BaseException) -> OSError | None:
    """The first OSError with an errno in `error`'s chain."""
    return next((e for e in _chain(error) if isinstance(e, OSError) and e.errno is not None), None)


def describe(error: BaseException, workdir: str | None = None) -> str | None:
    """One line for a fault of the machine in `error`'s chain (what happened, to which file, what to
    do), or None when `error` is not one: a bug keeps its traceback."""
    if disk_full(error):
        os_error = _os_error(error)
        path = (os_error.filename if os_error is not None and os_error.errno in _DISK_FULL_ERRNOS else None) \
            or next((p for e in _chain(error) if (p := _path_in_message(str(e)))), None) or workdir
        where = f" writing {path}" if path else ""
        return (f"no space left on the disk{where}; free some and rerun the same command: it continues from "
                "what was written (training from its last complete checkpoint)")
    denied = permission_denied(error)
    if denied:
        return f"{denied}: permission denied; give this user access to it or choose another path"
    e = _os_error(error)
    if e is None or not e.filename:
        return None
    path = str(e.filename)
    if e.errno == errno.EROFS:
        return f"{path}: the file system is read-only; choose a writable path"
    if e.errno == errno.ENOENT:
        return (f"{path}: no such file or folder (was it removed or moved while the run used it?); "
                "restore it and rerun the same command: it continues from what was written")
    return f"{path}: {e.strerror or type(e).__name__}"


def permission_denied(error: BaseException | None) -> str | None:
    """The path that `error` (or one it was raised from) was refused, if any: an OSError of EACCES,
    EPERM or EROFS, or tensorstore's PERMISSION_DENIED quoting the file."""
    for e in _chain(error):
        if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return str(e.filename or "a file")
        if "PERMISSION_DENIED" in str(e):
            return _path_in_message(str(e)) or "a file"
    return None


@contextlib.contextmanager
def writing(path):
    """Names `path` in an OSError raised while writing it: a write() that fails on a full disk names
    no file, and an atomic writer's temporary file is not the one the user knows."""
    try:
        yield
    except OSError as e:
        if e.errno is None or e.filename == str(path):
            raise
        raise OSError(e.errno, e.strerror, str(path)) from e


class LibraryDiskFullFilter(logging.Filter):
    """Drops the records in which libraries report a full disk, with their tracebacks (orbax logs one
    per background thread of a failed checkpoint, asyncio one per orphaned future): the failure
    reaches the entry point as an exception, which says it in one line. polypjax's own records stay."""

    _OWN = str(pathlib.Path(__file__).resolve().parent)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.pathname.startswith(self._OWN):
            return True
        if record.exc_info and disk_full(record.exc_info[1]):
            return False
        return _DISK_FULL_TEXT not in record.getMessage()


def _noise(error: BaseException | None) -> bool:
    # orbax runs each checkpoint write in an event loop of its own and closes it when a write fails;
    # tensorstore then completes the other writes of that loop and its callbacks find it closed.
    closed_loop = isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
    return closed_loop or disk_full(error)


def install_quiet_hooks() -> None:
    """Keeps tracebacks of a full disk (and of what follows it inside orbax's threads) out of this
    process's output: threads that die of it, and exceptions raised where Python can only print them
    (callbacks from tensorstore's threads). Every other exception is printed as before. For entry
    points only: it changes process-wide hooks."""
    previous_thread_hook, previous_unraisable_hook = threading.excepthook, sys.unraisablehook

    def thread_hook(args):
        if not _noise(args.exc_value):
            previous_thread_hook(args)

    def unraisable_hook(args):
        if not _noise(args.exc_value):
            previous_unraisable_hook(args)

    threading.excepthook, sys.unraisablehook = thread_hook, unraisable_hook


def ignore_orphaned_coroutines() -> None:
    """After a failed asynchronous checkpoint, orbax leaves coroutines that were never awaited, and
    Python warns about each when it collects them at exit (after the one-line error)."""
    import warnings
    warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited", category=RuntimeWarning)
