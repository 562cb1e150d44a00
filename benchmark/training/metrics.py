"""What a run measures: the loss, the weight-decay term, layer energies, test accuracy, and
the environment a record states.
"""

from __future__ import annotations

import platform
from typing import Any

import numpy
import torch
import torch.nn.functional as F

from benchmark import __version__, records
from regularizers import hyperspherical_energy


def weight_decay_term(model: torch.nn.Module, wd: float) -> float:
    """wd/2 * sum of squares of ALL parameters (what SGD's weight_decay=wd minimises)."""
    with torch.no_grad():
        return float(wd / 2 * sum(p.double().pow(2).sum() for p in model.parameters()))


def layer_energies(model: torch.nn.Module, roles: dict[str, str]) -> dict[str, float]:
    """Plain (unprojected, full-space, s=2) hyperspherical energy of every conv/linear weight."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        return {
            name: float(hyperspherical_energy(params[name].detach().float().flatten(1), s=2))
            for name in roles
            if params[name].shape[0] >= 2
        }


def evaluate(run: Any, x_all, y_all, batch=1000, per_image: list | None = None
             ) -> tuple[float, float]:
    """(accuracy %, mean CE) on a test set with running BN statistics; ``per_image``, when
    given, receives the (n,) bool tensor of which images were classified correctly."""
    n = x_all.shape[0]
    batches = ((x_all[lo : lo + batch], y_all[lo : lo + batch]) for lo in range(0, n, batch))
    correct, loss_sum, hits = eval_sums(run, batches)
    if per_image is not None:
        per_image.append(hits)
    return float(correct) * 100.0 / n, float(loss_sum) / n


@torch.no_grad()
def eval_sums(run: Any, batches) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(number correct, summed CE, per-image correctness (n,) bool) over ``batches`` of (uint8
    images, labels), in evaluation mode (running BN statistics) on ``run.model``; tensors on
    ``run.device``, not synced."""
    model = run.model
    model.eval()
    correct = torch.zeros((), device=run.device)
    loss_sum = torch.zeros((), device=run.device)
    hits = []
    for x, y in batches:
        x = run.inputs(x.to(run.device, non_blocking=True))
        y = y.to(run.device, non_blocking=True)
        with run.autocast():
            logits = model(x).to(run.dtype)
        hits.append(logits.argmax(1) == y)
        correct += hits[-1].sum()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
    model.train()
    return correct, loss_sum, (torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool,
                                                                         device=run.device))


def environment() -> dict:
    import timm
    import torchvision

    return {
        "git": records.git_state(),
        "versions": {
            "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "timm": timm.__version__,
            "numpy": numpy.__version__, "comhe_bench": __version__,
        },
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def smoothed_cross_entropy(logits: torch.Tensor, y: torch.Tensor, smoothing: float,
                           softmax_eps: float) -> torch.Tensor:
    """Mean of -sum_k t_k log(softmax(z)_k + softmax_eps), t = (1 - smoothing) onehot + smoothing/K.

    softmax_eps = 0 is PyTorch's label-smoothed cross-entropy; the authors' TF code uses 1e-4.
    logits (..., B, K), y (..., B): the mean is over B, one value per leading index (packed seeds).
    """
    if softmax_eps == 0:
        if logits.dim() == 2:
            return F.cross_entropy(logits, y, label_smoothing=smoothing)
        per_example = F.cross_entropy(logits.flatten(0, -2), y.flatten(), label_smoothing=smoothing,
                                      reduction="none")
        return per_example.view(y.shape).mean(-1)
    k = logits.shape[-1]
    target = F.one_hot(y, k).to(logits.dtype) * (1 - smoothing) + smoothing / k
    return -(target * torch.log(torch.softmax(logits, dim=-1) + softmax_eps)).sum(-1).mean(-1)
