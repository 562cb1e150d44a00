import pytest
import torch
from torch import nn


class TinyNet(nn.Module):
    """Parameters only (no forward needed): first (4x3), two hidden of equal shape (6x2x5x5 ->
    fan-in 50), one hidden of fan-in 8, output (3x6). Roles are tagged like models/ does."""

    def __init__(self, dtype=torch.float64, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        mk = lambda *s: nn.Parameter(torch.randn(*s, generator=g, dtype=dtype))  # noqa: E731
        self.first = mk(4, 3)
        self.h1 = mk(6, 2, 5, 5)
        self.h2 = mk(6, 2, 5, 5)
        self.small = mk(5, 8)
        self.out = mk(3, 6)
        self.weight_roles = {"first": "first", "h1": "hidden", "h2": "hidden", "small": "hidden",
                             "out": "output"}


@pytest.fixture
def tiny():
    return TinyNet()
