"""Progress bars degrade to plain lines off a terminal (no escape codes in logs)."""

import io

from benchmark.progress import NullProgress, PlainProgress, progress


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_off_a_terminal_lines_are_plain_and_rate_limited():
    out = io.StringIO()
    bar = progress(100, "quick", unit="run", file=out)
    assert isinstance(bar, PlainProgress)
    bar.every_s = 3600  # nothing in between...
    for _ in range(100):
        bar.update()
    bar.set_postfix(loss="0.123")
    bar.close()
    bar.close()  # ...one line at the end, once
    text = out.getvalue()
    assert text.count("\n") == 1 and "\r" not in text and "\x1b" not in text
    assert text.startswith("quick: 100/100 run (100%,") and text.rstrip().endswith("loss=0.123")


def test_a_line_every_interval():
    out = io.StringIO()
    bar = PlainProgress(10, "run s0", every_s=0.0, file=out)
    bar.update(3)
    bar.update(2)
    assert out.getvalue().splitlines()[-1].startswith("run s0: 5/10 it (50%")


def test_on_a_terminal_a_tqdm_bar_and_disabled_is_none():
    bar = progress(5, "x", file=_Tty())
    assert type(bar).__name__ == "tqdm" or "tqdm" in type(bar).__module__
    bar.close()
    off = progress(5, "x", enabled=False)
    assert isinstance(off, NullProgress) and not isinstance(off, PlainProgress)
