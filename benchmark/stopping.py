"""Stopping a sweep cleanly: Ctrl-C / SIGTERM, and a full disk.

A signal only sets a flag (:func:`request_stop`). The runner stops dispatching when it sees the
flag and asks its worker processes to stop; the engine, between two iterations, writes its
checkpoint and raises :class:`Interrupted`, which unwinds through the runner's ``finally``
blocks (locks released, no ``failed`` record) up to the command line, which prints one line and
exits 130 (SIGINT) or 143 (SIGTERM). A second Ctrl-C while stopping is ignored: the checkpoint
being written is the point of stopping cleanly (``kill -9`` is always safe, see docs/sweeps.md).

:class:`DiskFull` is raised where a write fails with ENOSPC/EDQUOT: the sweep stops at once
instead of marking every remaining run ``failed``.
"""

from __future__ import annotations

import errno
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

_requested = threading.Event()
_signum: list[int] = []
SIGNALS = (signal.SIGINT, signal.SIGTERM)
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class Interrupted(BaseException):
    """Stopped by a signal; every run's checkpoint is written. Not an ``Exception``: code that
    records failures (``except Exception``) must let it through."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class DiskFull(Exception):
    """A write failed because the disk (or quota) is full; the message names the file."""


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def request_stop(signum: int = signal.SIGINT) -> None:
    if not _requested.is_set():
        _signum.append(signum)
        _requested.set()


def requested() -> bool:
    return _requested.is_set()


def signum() -> int:
    return _signum[0] if _signum else signal.SIGINT


def reset() -> None:
    _requested.clear()
    _signum.clear()


def raise_if_requested() -> None:
    if _requested.is_set():
        raise Interrupted(signum())


@contextmanager
def signals_request_stop() -> Iterator[None]:
    """SIGINT/SIGTERM set the stop flag while inside (main thread only; elsewhere a no-op).
    The previous handlers are restored on the way out; the flag is cleared on the way in."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reset()
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, lambda num, _frame: request_stop(num))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
