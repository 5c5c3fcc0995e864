"""Writing a command's output file without destroying what is at its path.

Every command that writes a file (the export's tuned file, the report, the accuracy JSON, the
benchmark CSVs) writes it with `write_output`, and checks the path with `check_output_path` before
it starts work that takes long (measuring, confirming), so that a path it cannot write is refused
first. The one policy:

* a missing path is created (and missing parent folders with it); an existing **regular file** is
  replaced **atomically**: the text goes to a temporary file beside it (``.NAME.XXXXXXXX.tmp`` in the
  same folder, so the rename never crosses a file system), is flushed to disk, gets the old file's
  permission bits (a new file: ``0666`` less the umask, as ``open(path, "w")`` gives), and is then
  renamed over the path. A reader sees the old file or the new one, never a half-written one;
* a **symbolic link** is written through: its final target (every link followed) is replaced as
  above, and the link itself is left as it is;
* anything else at the path is refused with `OutputPathError` (an `InputError`: one line, exit
  status 2) before anything is written: a folder, a device, a FIFO, a socket, a path below a
  regular file, and a place where no file can be created (a read-only or kernel file system such as
  ``/proc``, a folder without write permission) and a file without write permission (which
  ``open(path, "w")`` would not overwrite either);
* every failure while writing (a full disk, a file-size limit, an interrupt) removes the temporary
  file and leaves the old file untouched; an ``OSError`` becomes `OutputPathError` naming the path.
  A file-size limit (``ulimit -f``) would kill the process with ``SIGXFSZ`` mid-write, before it
  could clean up: while it writes (on the main thread), `write_output` ignores that signal, so the
  limit surfaces as an error instead.

A file with several hard links is replaced under this one name only (the other names keep the old
text): the price of an atomic replacement.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import stat
import threading
from pathlib import Path
from typing import Iterator, Union

from .errors import InputError

__all__ = ["OutputPathError", "check_output_path", "write_output", "save_figure"]

PathLike = Union[str, "os.PathLike[str]"]


class OutputPathError(InputError):
    """An output path that cannot be written without destroying what is there, or a failed write."""


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def _why(e: OSError) -> str:
    return e.strerror or type(e).__name__


def _existing_folder(target: Path, shown: str) -> Path:
    """The nearest folder above ``target`` that exists (where missing folders would be created);
    OutputPathError if a regular file (or another non-folder) is in the way."""
    here = target.parent
    while True:
        try:
            st = os.stat(here)
        except FileNotFoundError:
            here = here.parent
            continue
        except NotADirectoryError:
            here = here.parent  # a file further up: found and named below
            continue
        except OSError as e:
            raise OutputPathError(f"cannot write {shown}: {here}: {_why(e)}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise OutputPathError(f"cannot write {shown}: {here} is {_kind(st.st_mode)}, not a folder")
        return here


def _probe(folder: Path, shown: str) -> None:
    """Create and remove an empty file in ``folder``: refuses read-only and kernel file systems
    (``/proc``, ``/sys``) and folders without write permission before any work is done."""
    tmp = folder / f".{secrets.token_hex(6)}.probe.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise OutputPathError(f"cannot write {shown}: cannot create a file in {folder}: {_why(e)}") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(tmp)


def check_output_path(path: PathLike, *, probe: bool = True) -> Path:
    """The file that writing ``path`` replaces or creates (symbolic links followed: the policy of
    the module docstring); `OutputPathError` if the path must not or cannot be written. With
    ``probe`` (the default), also proves that a file can be created where it will be written."""
    shown = os.fspath(path)
    if not shown:
        raise OutputPathError("the output path is empty")
    if "\0" in shown:
        raise OutputPathError(f"the output path {shown!r} contains a NUL character")
    target = Path(os.path.realpath(shown))
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except NotADirectoryError:
        st = None  # a file in the way above it: named by _existing_folder
    except OSError as e:
        raise OutputPathError(f"cannot write {shown}: {_why(e)}") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        link = f" (a link to {target})" if os.path.islink(shown) else ""
        raise OutputPathError(f"cannot write {shown}{link}: it is {_kind(st.st_mode)}; give the path of a regular file")
    if st is not None and not os.access(target, os.W_OK):
        raise OutputPathError(f"cannot write {shown}: the file is read-only (permission denied); it is left as it is")
    folder = _existing_folder(target, shown)
    if probe:
        _probe(folder, shown)
    return target


@contextlib.contextmanager
def _file_size_limit_as_error() -> Iterator[None]:
    """Ignore SIGXFSZ while writing, so that exceeding ``ulimit -f`` is an EFBIG error (cleaned
    up) instead of a kill; only the main thread may change signal handlers."""
    if not hasattr(signal, "SIGXFSZ") or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGXFSZ, old)


def write_output(path: PathLike, data: Union[str, bytes], *, encoding: str = "utf-8") -> Path:
    """Write ``data`` (text is encoded with ``encoding``) to ``path`` by the policy of the module
    docstring; returns the file written (the link's target for a symbolic link)."""
    shown = os.fspath(path)
    target = check_output_path(path, probe=False)
    payload = data.encode(encoding) if isinstance(data, str) else bytes(data)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputPathError(f"cannot write {shown}: cannot create the folder {target.parent}: {_why(e)}") from None
    try:
        old_mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        old_mode = None
    except OSError as e:
        raise OutputPathError(f"cannot write {shown}: {_why(e)}") from None
    tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    except OSError as e:
        raise OutputPathError(f"cannot write {shown}: cannot create a file in {target.parent}: {_why(e)}") from None
    try:
        with _file_size_limit_as_error():
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
        if old_mode is not None:
            os.chmod(tmp, old_mode)
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise OutputPathError(f"cannot write {shown}: {_why(e)}; the old file, if any, is unchanged") from None
        raise
    return target


def save_figure(fig, path: PathLike, **savefig_kwargs) -> Path:
    """A matplotlib figure written to ``path`` by `write_output` (rendered in memory first, in the
    format of the path's suffix, PNG without one)."""
    import io

    buf = io.BytesIO()
    fmt = Path(os.fspath(path)).suffix.lstrip(".").lower() or "png"
    fig.savefig(buf, format=fmt, **savefig_kwargs)
    return write_output(path, buf.getvalue())
