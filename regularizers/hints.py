"""One "did you mean" for every unknown name in the project (regularizers, models, datasets,
protocols, config keys)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["hint"]


def hint(word: object, choices: Iterable[str], *, cutoff: float = 0.5) -> str:
    """``"; did you mean 'a', 'b'?"`` for the (up to 3) closest choices, ``""`` if none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=3, cutoff=cutoff)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
