"""The store's inter-process write lock: one writer at a time, waiting at most a timeout.

A writer takes an exclusive `flock` on `<store>/.write.lock` for the whole transaction (from before it
reads the catalog it builds on until after its catalog commit). The kernel drops the lock when the
holding process exits, however it exits, so a crashed writer never leaves a stale lock behind; the
lock file itself is never deleted (deleting a flock'ed file would let two writers lock two different
files). While holding the lock a writer writes who it is (pid, host, start time, command line) into
the file so that a writer that gives up can say who is in the way.

Readers never take this lock (see `quantlm.data.store_catalog`).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no inter-process locking (documented limitation)
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".write.lock"
LOCK_TIMEOUT_ENV = "QUANTLM_STORE_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 60.0

# Store roots whose write lock a thread of this process holds: {resolved root: thread id}. flock does
# not nest (a second flock on a new descriptor of the same file waits for the first one), so a nested
# transaction on the same store would wait for itself; it is refused at once instead.
_HELD: dict[str, int] = {}
_HELD_GUARD = threading.Lock()


class StoreBusyError(ValueError):
    """Another process kept the store's write lock longer than this writer was willing to wait.

    A user-facing error: the CLI prints it without a traceback.
    """

    user_facing = True


def resolve_lock_timeout(value: float | None = None) -> float:
    """Seconds a writer waits for the write lock: `value`, else $QUANTLM_STORE_LOCK_TIMEOUT, else 60."""
    if value is not None:
        return float(value)
    raw = os.environ.get(LOCK_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_LOCK_TIMEOUT
    try:
        seconds = float(raw)
    except ValueError:
        raise StoreBusyError(f"{LOCK_TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if seconds < 0:
        raise StoreBusyError(f"{LOCK_TIMEOUT_ENV}={raw!r} must be >= 0 seconds")
    return seconds


class WriteLock:
    """Exclusive write lock of the store at `root`, as a context manager.

    `timeout` is in seconds (0 = try once). Entering waits (polling every 10-200 ms) and raises
    StoreBusyError naming the store and the current holder if the lock is still taken after `timeout`.
    """

    def __init__(self, root: Path, timeout: float) -> None:
        self.root = Path(root)
        self.timeout = timeout
        self.path = self.root / LOCK_FILE
        self._fd: int | None = None
        self._key = str(self.root.resolve())

    def __enter__(self) -> WriteLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock or raise StoreBusyError after `timeout` seconds."""
        with _HELD_GUARD:
            if _HELD.get(self._key) == threading.get_ident():
                raise RuntimeError(f"a transaction on store {self.root} is already open in this thread; "
                                   "nested transactions are not supported (use the open transaction)")
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            deadline = time.monotonic() + self.timeout
            delay = 0.01
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        holder = self.holder()
                        os.close(fd)
                        raise StoreBusyError(
                            f"store {self.root} is busy: another writer ({holder or 'unknown process'}) holds its "
                            f"write lock {self.path}; gave up after waiting {self.timeout:g} s. Wait for that "
                            f"write to finish and try again, or wait longer with {LOCK_TIMEOUT_ENV}=<seconds>."
                        ) from None
                    time.sleep(min(delay, left))
                    delay = min(delay * 2, 0.2)
                except BaseException:
                    os.close(fd)
                    raise
        self._fd = fd
        with _HELD_GUARD:
            _HELD[self._key] = threading.get_ident()
        info = (f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                f"{' '.join(sys.argv)[:200]}")
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(errors="replace"), 0)

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self._fd is None:
            return
        with _HELD_GUARD:
            _HELD.pop(self._key, None)
        try:
            os.ftruncate(self._fd, 0)
        finally:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def holder(self) -> str:
        """Who holds the lock, as the holder wrote it (best effort; '' if unknown)."""
        try:
            return self.path.read_text(errors="replace").strip()
        except OSError:
            return ""
