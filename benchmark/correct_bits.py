"""Per-image correctness of a final evaluation, stored compactly in the run record.

``{"encoding": "packbits-little-base64", "n": n, "bits": "..."}``: bit i (little-endian within
each byte, numpy ``packbits(bitorder="little")``) is 1 when test image i was classified
correctly. 10,000 images take 1,668 characters. Two runs evaluated on the same images then give
a paired (McNemar) standard error of their accuracy difference (docs/statistics.md).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

ENCODING = "packbits-little-base64"


def encode(correct: Any) -> dict[str, Any]:
    """``correct``: shape (n,), bool (a numpy array or a CPU/GPU tensor)."""
    if hasattr(correct, "detach"):
        correct = correct.detach().cpu().numpy()
    arr = np.asarray(correct, dtype=bool).reshape(-1)
    bits = np.packbits(arr, bitorder="little").tobytes()
    return {"encoding": ENCODING, "n": int(arr.size), "bits": base64.b64encode(bits).decode()}


def decode(obj: Any) -> np.ndarray | None:
    """The bool array of :func:`encode`'s output; None when ``obj`` is absent or malformed."""
    if not isinstance(obj, dict) or obj.get("encoding") != ENCODING:
        return None
    try:
        n = int(obj["n"])
        raw = np.frombuffer(base64.b64decode(obj["bits"], validate=True), dtype=np.uint8)
    except (KeyError, TypeError, ValueError):
        return None
    if raw.size != (n + 7) // 8:
        return None
    return np.unpackbits(raw, bitorder="little", count=n).astype(bool)
