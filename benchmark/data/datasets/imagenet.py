"""ImageNet (ILSVRC-2012) in torchvision's ImageFolder layout: ``$COMHE_DATA/imagenet/train/<wnid>/
*.JPEG`` and ``$COMHE_DATA/imagenet/val/<wnid>/*.JPEG`` (the validation images sorted into class
folders, e.g. with the ``valprep.sh`` script of the torchvision reference scripts). Nothing is
downloaded (ImageNet needs a licence). Any ImageFolder tree works: the classes are the folders
under ``train/`` (1000 for ImageNet-1k).

Read from disk while training (``benchmark.data.files``): RandomResizedCrop to
``data.image_size`` (224) + horizontal flip for training, resize to 256/224 of it + centre crop
for evaluation, as torchvision's reference recipe (references/classification/presets.py).
"""

from __future__ import annotations

from benchmark.config import ConfigError, Data

from benchmark.data.datasets.folders import FileDataset, even_subset, scan_image_folder
from benchmark.data.datasets.registry import data_dir, register_dataset

TRAIN_SIZE = 1_281_167  # ILSVRC-2012 training images (50,000 validation)


def imagenet_dir():
    return data_dir() / "imagenet"


def _missing() -> str | None:
    root = imagenet_dir()
    absent = [d for d in ("train", "val") if not (root / d).is_dir()]
    if not absent:
        return None
    return (f"imagenet not found: no {' and no '.join(f'{root / d}/' for d in absent)} (ImageFolder "
            f"layout: train/<class>/*.JPEG and val/<class>/*.JPEG); set COMHE_DATA or --data-dir "
            f"to the folder holding imagenet/ (it cannot be downloaded)")


@register_dataset("imagenet", num_classes=1000, offline=False, channels=3, image_size=None,
                  train_size=TRAIN_SIZE, missing=_missing, kind="files",
                  description="ImageNet-1k (ILSVRC-2012) from ImageFolder files under "
                              "$COMHE_DATA/imagenet/{train,val}, decoded by a DataLoader")
def imagenet(arg: str | None, cfg: Data) -> FileDataset:
    problem = _missing()
    if problem:
        raise ConfigError(problem)
    root = imagenet_dir()
    train, classes = scan_image_folder(root / "train", "imagenet train/")
    test, val_classes = scan_image_folder(root / "val", "imagenet val/")
    if val_classes != classes:
        raise ConfigError(f"imagenet: val/ has {len(val_classes)} class folders, train/ "
                          f"{len(classes)}; they must be the same folders")
    return FileDataset("imagenet", even_subset(train, cfg.max_train),
                       even_subset(test, cfg.max_test), len(classes), classes)
