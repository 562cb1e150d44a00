"""Architectures for CoMHE-Bench: the paper's CNN-9, CIFAR ResNets and any timm model by name.

    import models
    model = models.create("cnn9", num_classes=100)            # the paper's network
    model = models.create("timm:resnet18", num_classes=100)   # timm, with a CIFAR stem
    model.weight_roles   # {"features.conv1_1.conv.weight": "first", ..., "score.weight": "output"}
    model.model_notes    # one-line notes for the run record

Depends on torch and timm only. See docs/models.md.
"""

# Importing the family modules runs their @register decorators.
from models import cnn9 as _cnn9  # noqa: F401
from models import pointnet as _pointnet  # noqa: F401
from models import resnet_cifar as _resnet_cifar  # noqa: F401
from models.registry import available, create, describe, register

__all__ = ["available", "create", "describe", "register"]
