"""The hyperspherical-energy kernel (recipe.md section 1) and its projected forms.

One kernel, :func:`hyperspherical_energy`, serves MHE, half-space MHE and every CoMHE variant;
:func:`projected_energy` and :func:`group_energy` only reshape their input before calling it.

Conventions (PyTorch layout): a layer's neurons are the ROWS of ``W`` with shape ``(..., N, d)``;
leading dimensions are independent batches (for example several layers of equal shape stacked
together so that one call serves them all).

Numerical safety. With ``eps > 0`` every cosine lies strictly inside (-1, 1) in exact
arithmetic, but in float32 the cosine of two (nearly) coincident neurons rounds to 1 and
``d2 = 2 - 2c`` to 0 or below. We therefore clamp the cosine to
``[-1 + tiny, 1 - tiny]`` with ``tiny = torch.finfo(dtype).eps`` (1.2e-7 in float32, 2.2e-16 in
float64). In float64 the clamp is inactive unless ``||w||^2 / eps`` exceeds about 1e15, so it does
not change results on normal inputs; in float32 it keeps values and gradients finite (a clamped
pair gets a zero gradient, as for any clamp).

Host syncs: the kernel never calls ``.item()`` nor uses boolean-mask indexing, so it can be
captured in a CUDA graph. Pairs ``i < j`` are selected with a multiplicative triangular mask.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

__all__ = [
    "POWERS",
    "AUTO_CHUNK_THRESHOLD",
    "parse_power",
    "hyperspherical_energy",
    "projected_energy",
    "group_energy",
    "neuron_cosines",
]

#: The accepted powers ``s`` in canonical form (ints for the chord energies, strings for angles).
POWERS: tuple = (0, 1, 2, "a0", "a1", "a2")
#: Above this many neurons the energy is computed in row blocks (bounded peak memory).
AUTO_CHUNK_THRESHOLD = 2048
_DEFAULT_CHUNK = 1024
# recipe.md section 1: the angular energies use (theta / pi + 1e-4); not the same eps as the norm.
_ANGLE_EPS = 1e-4


def parse_power(s) -> int | str:
    """Canonical form of a power: 0, 1, 2, "a0", "a1" or "a2" (accepts "2" for 2).

    Raises ValueError with the allowed values for anything else (bools and floats included).
    """
    if isinstance(s, bool):
        pass
    elif isinstance(s, int) and s in (0, 1, 2):
        return s
    elif isinstance(s, str):
        key = s.strip().lower()
        if key in ("0", "1", "2"):
            return int(key)
        if key in ("a0", "a1", "a2"):
            return key
    raise ValueError(f"s (power) must be one of 0, 1, 2, 'a0', 'a1', 'a2'; got {s!r}")


def _pair_energy(c: Tensor, power, half_space: bool = False) -> Tensor:
    """Per-pair energy of recipe.md section 1 as a function of the cosine c (any shape).

    half_space=True returns e(c) + e(-c), the two distinct distances a pair (i, j) has among
    {w, -w}; for s = 0 and 2 it uses the closed forms -log(4 (1 - c^2)) and 1 / (1 - c^2) (fewer
    elementwise passes over the N x N matrix, which dominate the cost).
    """
    tiny = torch.finfo(c.dtype).eps
    c = c.clamp(-1.0 + tiny, 1.0 - tiny)
    if half_space and power in (0, 2):
        one_minus_c2 = 1.0 - c * c
        return -torch.log(4.0 * one_minus_c2) if power == 0 else torch.reciprocal(one_minus_c2)
    if half_space:
        return _pair_energy(c, power) + _pair_energy(-c, power)
    if power in (0, 1, 2):
        d2 = 2.0 - 2.0 * c
        if power == 0:
            return -torch.log(d2)
        if power == 1:
            return torch.rsqrt(d2)
        return torch.reciprocal(d2)
    t = torch.arccos(c) / math.pi + _ANGLE_EPS
    if power == "a0":
        return -torch.log(t)
    if power == "a1":
        return torch.reciprocal(t)
    return torch.reciprocal(t * t)


def _inv_norms(W: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(1 / n_i, ||w_i||^2), n_i = sqrt(||w_i||^2 + eps). W (..., N, d) -> (..., N), (..., N)."""
    sq = (W * W).sum(-1)
    return torch.rsqrt(sq + eps), sq


def _unit_rows(W: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(W with every row scaled by 1 / n_i, ||w_i||^2). W (..., N, d) -> (..., N, d), (..., N).

    Scaling the rows once (N x d, or N x k for projected neurons) and taking their Gram gives the
    cosines in one matmul: two elementwise passes over the N x N Gram, and their backward nodes,
    fewer than scaling the Gram by r_i r_j; at these sizes the number of operations decides.
    """
    r, sq = _inv_norms(W, eps)
    return W * r.unsqueeze(-1), sq


def neuron_cosines(W: Tensor, eps: float = 1e-4) -> Tensor:
    """Eps-normalised cosine matrix c_ij = <w_i, w_j> / (n_i n_j). W (..., N, d) -> (..., N, N)."""
    U, _ = _unit_rows(W, eps)
    return U @ U.transpose(-1, -2)


def _block_sum(U: Tensor, row0: int, rows: int, power, half_space: bool) -> Tensor:
    """Sum over pairs (i, j), i in [row0, row0+rows), j > i, of e(c) (+ e(-c) if half-space).

    U (..., N, d): the rows scaled to (eps-)unit norm -> (...). The cosines are the Gram block
    of U; pairs j > i are kept by ``triu`` with an offset (no boolean indexing, no mask to build).
    """
    c = U[..., row0:row0 + rows, :] @ U.transpose(-1, -2)  # (..., rows, N)
    return torch.triu(_pair_energy(c, power, half_space), diagonal=row0 + 1).sum((-2, -1))


def _check_W(W: Tensor, what: str = "W") -> None:
    if not isinstance(W, Tensor):
        raise ValueError(f"{what} must be a torch.Tensor of shape (..., N, d); got {type(W).__name__}")
    if W.ndim < 2:
        raise ValueError(f"{what} must have shape (..., N, d) with ndim >= 2; got shape {tuple(W.shape)}")
    if W.shape[-2] < 2:
        raise ValueError(f"{what} needs N >= 2 neurons (rows) for pairs; got shape {tuple(W.shape)}")
    if not W.is_floating_point():
        raise ValueError(f"{what} must be a floating-point tensor; got dtype {W.dtype}")


def hyperspherical_energy(
    W: Tensor,
    s=2,
    half_space: bool = False,
    eps: float = 1e-4,
    chunk_size: int | None = None,
) -> Tensor:
    """Pair-averaged hyperspherical energy of the rows of ``W`` (recipe.md section 1).

    Args:
        W: (..., N, d) neurons as rows, N >= 2; leading dims are independent batches.
        s: power, one of 0, 1, 2, "a0", "a1", "a2" (``"2"`` is accepted for 2).
        half_space: energy of the 2N points {w_i, -w_i} (normaliser 2N(2N-1)/2), computed from
            the N x N cosines without materialising [W; -W].
        eps: added to ||w||^2 inside the root of every norm; must be > 0.
        chunk_size: rows per block. None: one block up to ``AUTO_CHUNK_THRESHOLD`` neurons,
            blocks of 1024 rows above it. With autograd on, each block is recomputed in the
            backward pass (activation checkpointing), so peak memory is O(chunk * N), not O(N^2).

    Returns:
        (...) the mean of e_ij over unordered pairs i < j.
    """
    _check_W(W)
    power = parse_power(s)
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0; got {eps!r}")
    N = W.shape[-2]
    if chunk_size is None:
        chunk_size = N if N <= AUTO_CHUNK_THRESHOLD else _DEFAULT_CHUNK
    elif isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be None or an int >= 1; got {chunk_size!r}")

    U, sq = _unit_rows(W, eps)
    if chunk_size >= N:
        total = _block_sum(U, 0, N, power, half_space)
    else:
        total = W.new_zeros(W.shape[:-2])
        use_ckpt = torch.is_grad_enabled() and W.requires_grad
        for row0 in range(0, N, chunk_size):
            rows = min(chunk_size, N - row0)
            if use_ckpt:
                part = checkpoint(_block_sum, U, row0, rows, power, half_space, use_reentrant=False)
            else:
                part = _block_sum(U, row0, rows, power, half_space)
            total = total + part

    if not half_space:
        return total / (N * (N - 1) / 2)
    # Among the 2N points every unordered pair i<j occurs twice with c and twice with -c
    # ((w_i, w_j), (-w_i, -w_j) and (w_i, -w_j), (-w_i, w_j)); plus the N pairs (w_i, -w_i)
    # whose cosine is -||w_i||^2 / n_i^2 (not exactly -1 because of eps).
    self_pairs = _pair_energy(-sq / (sq + eps), power).sum(-1)
    return (2.0 * total + self_pairs) / (N * (2 * N - 1))


def projected_energy(
    W: Tensor,
    P: Tensor,
    s=2,
    half_space: bool = True,
    eps: float = 1e-4,
    chunk_size: int | None = None,
) -> Tensor:
    """Energy of the projected neurons z_i = P w_i, averaged over projections.

    Args:
        W: (..., N, d) neurons as rows.
        P: (k, d) one projection, or (..., C, k, d) C projections; P's leading dims (if any)
            broadcast against W's (so stacked layers (L, N, d) can take their own (L, C, k, d)).
        s, half_space, eps, chunk_size: as in :func:`hyperspherical_energy`.

    Returns:
        (...) broadcast batch shape; all C projections go through ONE batched matmul.
    """
    _check_W(W)
    if not isinstance(P, Tensor) or P.ndim < 2:
        got = tuple(P.shape) if isinstance(P, Tensor) else type(P).__name__
        raise ValueError(f"P must be a tensor of shape (k, d) or (..., C, k, d); got {got}")
    if P.shape[-1] != W.shape[-1]:
        raise ValueError(
            f"P's last dim must equal W's fan-in d={W.shape[-1]}; got P of shape {tuple(P.shape)}"
        )
    if P.shape[-2] < 1:
        raise ValueError(f"P needs k >= 1 rows; got shape {tuple(P.shape)}")
    if P.ndim == 2:
        return hyperspherical_energy(W @ P.transpose(-1, -2), s, half_space, eps, chunk_size)
    C, k = P.shape[-3], P.shape[-2]
    # One GEMM against all C*k projection rows: (..., C*k, d) @ W^T (..., d, N). Broadcasting W
    # to (..., C, N, d) instead would make matmul materialise C copies of W (and of its
    # gradient). Projections first, so that each projection's (k, N) block is contiguous and
    # its transpose, the (N, k) neurons the kernel takes, needs no copy for the Gram matmul.
    Z = (P.flatten(-3, -2) @ W.transpose(-1, -2)).unflatten(-2, (C, k))  # (..., C, k, N)
    Z = Z.transpose(-1, -2)  # (..., C, N, k), a view
    return hyperspherical_energy(Z, s, half_space, eps, chunk_size).mean(-1)


def group_energy(
    W: Tensor,
    groups: int,
    s=2,
    half_space: bool = True,
    eps: float = 1e-4,
) -> Tensor:
    """G-CoMHE energy (this project's definition): split the d input coordinates into ``groups``
    contiguous groups of d/groups coordinates, take the energy inside each group, average.

    W (..., N, d) with d divisible by groups -> (...). One batched kernel call, no loop.
    """
    _check_W(W)
    d = W.shape[-1]
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or d % groups:
        raise ValueError(f"groups must be an int >= 1 dividing the fan-in d={d}; got {groups!r}")
    Wg = W.unflatten(-1, (groups, d // groups)).transpose(-3, -2)  # (..., G, N, d/G)
    return hyperspherical_energy(Wg, s, half_space, eps).mean(-1)
