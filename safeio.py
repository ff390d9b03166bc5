"""Safe file output: every file divconq writes goes through here.

- ``atomic_write`` / ``atomic_path``: the bytes go to a temporary file beside the target,
  are flushed to disk, then renamed over it. A full disk or a kill leaves the earlier
  file whole (never a fragment) and no half-written file under the final name.
- ``WriterLock``: one writer per store or results file. A second process that tries to
  write the same file is refused with a message naming the first one's PID.
- ``os_error_line``: an ``OSError`` as one line naming the path and the fix;
  ``is_disk_full``: whether an error is the disk (full, or over quota), however it came.
- ``dir_holds_files``: the check before writing an output dir (refuse a file in its place).
"""

from __future__ import annotations

import errno
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from divconq.errors import DivconqError

__all__ = [
    "WriterLock",
    "atomic_dir",
    "atomic_path",
    "atomic_write",
    "check_writable_target",
    "dir_holds_files",
    "is_disk_full",
    "os_error_line",
]

_FIXES = {
    errno.ENOSPC: "disk full: free some space and rerun",
    errno.EDQUOT: "disk quota exceeded: free some space and rerun",
    errno.EFBIG: "file too large for this filesystem or limit: write elsewhere",
    errno.EACCES: "permission denied: choose a path you can write, or fix its permissions",
    errno.EPERM: "operation not permitted: choose a path you can write, or fix its permissions",
    errno.EROFS: "read-only filesystem: choose a path on a writable filesystem",
    errno.EISDIR: "it is a directory: pass a file path",
    errno.ENOTDIR: "a part of the path is not a directory: check the path",
    errno.ENOENT: "no such file or directory: check the path",
    errno.ENAMETOOLONG: "file name too long: use a shorter path",
}


def os_error_line(exc: OSError, path: str | Path | None = None, doing: str = "write") -> str:
    """``cannot write PATH (disk full: free some space and rerun)`` for any OSError."""
    if exc.errno is None:  # raised with a message of our own, e.g. FileNotFoundError("data file not found: x")
        return f"{exc}: check the path"
    where = path if path is not None else (exc.filename or "a file")
    reason = _FIXES.get(exc.errno or -1) or f"{exc.strerror or type(exc).__name__}: check the path and its permissions"
    return f"cannot {doing} {where} ({reason})"


_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# What a full disk says where no errno comes with it: the C library's text inside another
# error (safetensors, torch), and SQLite's SQLITE_FULL.
_DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "database or disk is full")


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk is full (or the quota spent): by its errno, SQLite's
    error name, or the system's message quoted inside another library's error."""
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
        return True
    if getattr(exc, "sqlite_errorname", None) == "SQLITE_FULL":
        return True
    return any(text in str(exc) for text in _DISK_FULL_TEXTS)


def dir_holds_files(path: str | Path, what: str = "output path") -> bool:
    """Whether ``path`` is a directory with something in it (False when it does not exist
    or is empty); a file in its place is refused."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DivconqError(f"{what} {path} exists and is not a directory: choose another path")
    return path.is_dir() and any(path.iterdir())


def check_writable_target(path: str | Path, what: str = "output file") -> Path:
    """Refuse, before any work, a target that is a directory or whose folder cannot be made."""
    path = Path(path)
    if path.is_dir():
        raise DivconqError(f"{what} {path} is a directory: pass a file path")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise DivconqError(f"{what} {path}: {parent} is not a directory: check the path")
    return path


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some filesystems do not open directories; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, what: str = "output file") -> Iterator[Path]:
    """A temporary path beside ``path``; on a clean exit it is renamed over ``path``.

    For writers that need a file name (matplotlib's ``savefig``). On any error the
    temporary file is removed and ``path`` is left as it was; an ``OSError`` becomes a
    ``DivconqError`` naming the path and the fix.
    """
    target = check_writable_target(path, what)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, scratch_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise DivconqError(os_error_line(exc, target)) from None
    os.close(fd)
    scratch = Path(scratch_name)
    try:
        yield scratch
        with open(scratch, "rb+") as handle:  # what the writer left must be on disk before the rename
            os.fsync(handle.fileno())
        if target.exists() and not target.is_dir():
            os.chmod(scratch, target.stat().st_mode & 0o7777)
        else:
            os.chmod(scratch, 0o666 & ~_umask())
        os.replace(scratch, target)
        _fsync_dir(target.parent)
    except OSError as exc:
        scratch.unlink(missing_ok=True)
        raise DivconqError(os_error_line(exc, target)) from None
    except BaseException:
        scratch.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, data: str | bytes, *, what: str = "output file", encoding: str = "utf-8") -> Path:
    """Write ``data`` to ``path`` all at once: the old file stays whole until the new one is."""
    payload = data.encode(encoding) if isinstance(data, str) else data
    with atomic_path(path, what) as scratch:
        with open(scratch, "wb") as handle:
            handle.write(payload)
    return Path(path)


@contextmanager
def atomic_dir(path: str | Path, *, replace_existing: bool = False, what: str = "output dir") -> Iterator[Path]:
    """A scratch directory beside ``path``, moved into place whole on a clean exit.

    An existing ``path`` is replaced only with ``replace_existing`` (or when empty); it is moved aside
    first and removed once the new one is in place, so there is never a moment with a
    half-written directory under the final name.
    """
    import shutil

    target = Path(path)
    dir_holds_files(target, what)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    except OSError as exc:
        raise DivconqError(os_error_line(exc, target)) from None
    old: Path | None = None
    try:
        yield scratch
        for item in scratch.rglob("*"):  # the files must be on disk before the rename publishes them
            if item.is_file():
                with open(item, "rb") as handle:
                    os.fsync(handle.fileno())
        if target.exists():
            if not replace_existing and any(target.iterdir()):  # an empty dir holds nothing to lose
                raise DivconqError(f"{what} {target} appeared while writing: choose another path, or overwrite")
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
            os.replace(target, old / target.name)
        os.replace(scratch, target)
        _fsync_dir(target.parent)
    except OSError as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        if old is not None and not target.exists():
            os.replace(old / target.name, target)  # put the earlier output back
        raise DivconqError(os_error_line(exc, target)) from None
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


class WriterLock:
    """An exclusive, advisory lock on ``<path>.lock``: one writing process per file.

    ``flock`` is released by the kernel when the process dies, so a killed run never
    leaves a stale lock; the file only carries the holder's PID for the message. Taking
    the lock never waits: a second writer is refused at once. Within one process the
    lock is re-entrant (the CLI takes it before loading models, the writer again).
    """

    _held: dict[str, list[int]] = {}  # lock path -> [descriptor, holders] in this process
    _guard = threading.Lock()

    def __init__(self, path: str | Path, what: str = "file") -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.what = what
        self._key = os.path.abspath(self.lock_path)
        self._holding = False

    def acquire(self) -> WriterLock:
        with self._guard:
            if self._holding:
                return self
            if self._key in self._held:
                self._held[self._key][1] += 1
            else:
                fd = self._lock()
                if fd is not None:
                    self._held[self._key] = [fd, 1]
            self._holding = True
        return self

    def _lock(self) -> int | None:
        import fcntl

        try:
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise DivconqError(os_error_line(exc, self.lock_path, "create the lock file")) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"process {holder}" if holder else "another process"
            raise DivconqError(
                f"{self.what} {self.path} is being written by {who} (lock {self.lock_path}): wait for it to "
                "finish or stop it, or write to another file; two writers would duplicate its rows"
            ) from None
        except OSError:  # a filesystem without flock: go on unlocked rather than refuse all work
            os.close(fd)
            return None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd

    def release(self) -> None:
        with self._guard:
            if not self._holding:
                return
            self._holding = False
            held = self._held.get(self._key)
            if held is None:
                return
            held[1] -= 1
            if held[1] == 0:
                del self._held[self._key]
                os.close(held[0])  # closing the descriptor releases the flock

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None
