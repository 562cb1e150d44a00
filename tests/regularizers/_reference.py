"""Independent float64 references written from recipe.md's definitions (pure Python loops)."""

import math

EPS = 1e-4


def pair_energy(a, b, s, eps=EPS):
    na = math.sqrt(sum(x * x for x in a) + eps)
    nb = math.sqrt(sum(x * x for x in b) + eps)
    c = sum(x * y for x, y in zip(a, b)) / (na * nb)
    if s in (0, 1, 2):
        d2 = 2 - 2 * c
        return {0: -math.log(d2), 1: d2 ** -0.5, 2: 1 / d2}[s]
    t = math.acos(c) / math.pi + 1e-4
    return {"a0": -math.log(t), "a1": 1 / t, "a2": t ** -2}[s]


def energy(rows, s, half_space=False, eps=EPS):
    """Mean over unordered pairs of the points (materialising {w, -w} for half-space)."""
    pts = [list(r) for r in rows]
    if half_space:
        pts = pts + [[-x for x in r] for r in pts]
    total, count = 0.0, 0
    for i in range(len(pts)):
        for j in range(i + 1, len(pts)):
            total += pair_energy(pts[i], pts[j], s, eps)
            count += 1
    return total / count


def batched_energy(W, s, half_space=False, eps=EPS):
    """W: torch tensor (..., N, d) -> nested list of energies with the leading shape."""
    if W.ndim == 2:
        return energy(W.tolist(), s, half_space, eps)
    return [batched_energy(w, s, half_space, eps) for w in W]
