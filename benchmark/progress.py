"""Progress that reads well on a terminal and in a log file.

On a terminal: a tqdm bar (the suite's bar on line 0, the current run's on line 1, so the two
never overwrite each other). Off a terminal (redirected to a file, a Slurm log, CI): no escape
codes and no carriage returns, a plain line at most every ``every_s`` seconds and at the end.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm.auto import tqdm


class NullProgress:
    """tqdm's small interface doing nothing (progress turned off)."""

    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **kw: Any) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PlainProgress(NullProgress):
    """tqdm's small interface (update, set_postfix, set_postfix_str, close) as plain lines."""

    def __init__(self, total: int, desc: str, initial: int = 0, unit: str = "it",
                 every_s: float = 30.0, file: TextIO | None = None):
        self.total, self.desc, self.n, self.unit = total, desc, initial, unit
        self.every_s, self.file = every_s, file or sys.stderr
        self.postfix = ""
        self._t0 = self._last = time.monotonic()
        self._closed = False

    def _line(self) -> None:
        elapsed = time.monotonic() - self._t0
        pct = 100.0 * self.n / self.total if self.total else 100.0
        tail = f" {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {self.n}/{self.total} {self.unit} ({pct:.0f}%, {elapsed:.0f} s){tail}",
              file=self.file, flush=True)
        self._last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self._last >= self.every_s:
            self._line()

    def set_postfix(self, **kw: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._line()


def progress(total: int, desc: str, *, initial: int = 0, unit: str = "it", position: int = 0,
             enabled: bool = True, file: TextIO | None = None):
    """A tqdm bar on a terminal, :class:`PlainProgress` elsewhere, :class:`NullProgress` when
    disabled."""
    if not enabled:
        return NullProgress()
    stream = file or sys.stderr
    if stream.isatty():
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, position=position,
                    leave=position == 0, dynamic_ncols=True, file=stream)
    return PlainProgress(total, desc, initial=initial, unit=unit, file=stream)
