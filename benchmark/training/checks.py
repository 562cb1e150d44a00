"""The checks made before any run: everything that can be refused from the specs alone is refused
here, in one line, before data is loaded or a checkpoint is touched.

``validate(spec)`` is the public one (the planners and the command line call it on every run of a
suite); ``check_runs(specs)`` is what the training loop calls on the runs it is about to train
(each validated, the group distributable, packable when it is several seeds). The model is built
once per (name, keywords, channels, classes) on the meta device (no memory, no init cost) and
every shape check reads that one instance: the registry's name and keyword checks, the forward
pass with the run's input shape, the regularizer's layer checks, the auxiliary-loss hook.

What needs the built run (a file-backed dataset under a graphed or packed step, a regularizer
that reads its parameters behind the packed stand-ins' back) is checked at set-up, in ``run.py``
and ``packed.py``.
"""

from __future__ import annotations

import functools
import json

import torch

import models
import regularizers
from benchmark.config import ConfigError, RunSpec
from benchmark.data import datasets
from benchmark.plugins import load_plugins
from benchmark.training.distributed import check as check_distributed, env_world_size

# Seeds feed torch.manual_seed, numpy-style generators and data.stream.epoch_seed (the batch
# stream): 2**32 - 1 keeps every one of them in range.
MAX_SEED = 2**32 - 1


def check_runs(specs: list[RunSpec]) -> None:
    """What ``train_packed`` refuses before it sets anything up: each spec (``validate``), the
    group under the process group it runs in, and a group of several seeds as one packed run."""
    for spec in specs:
        validate(spec)
    check_distributed(specs[0].protocol, env_world_size(), packed=len(specs) > 1)
    if len(specs) > 1:
        check_packable(specs)


def validate(spec: RunSpec) -> None:
    """Raise ConfigError (one line) if the spec names anything unknown or impossible: names,
    hyper-parameters, the seed's range, the dataset's presence on disk, and whether the model
    takes the protocol's image size (a forward pass on the meta device). Nothing is written."""
    load_plugins()  # those of a parent process (workers), a no-op otherwise
    if isinstance(spec.seed, bool) or not isinstance(spec.seed, int) or not 0 <= spec.seed <= MAX_SEED:
        raise ConfigError(f"seed must be an integer in [0, {MAX_SEED}], got {spec.seed!r}")
    datasets.check_name(spec.dataset)
    chans, classes = _input_shape(spec.dataset)
    kwargs_json = json.dumps(spec.model_kwargs, sort_keys=True)
    _meta_model(spec.model, kwargs_json, chans, classes)  # unknown names and keywords fail here
    try:
        regularizers.create(spec.regularizer, **spec.regularizer_hparams)
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc).splitlines()[0]) from None
    check_distributed(spec.protocol, env_world_size())  # torchrun / Slurm: the batch divides
    datasets.preflight(spec.dataset, spec.protocol.data, spec.protocol.batch_size)
    kind = datasets.info(spec.dataset).kind
    if kind == "points":
        points = spec.protocol.data.points.num_points
        _check_model_input(spec.model, kwargs_json, chans, classes, (points, chans),
                           f"point clouds of shape ({points}, {chans})")
    else:
        size = spec.protocol.data.image_size
        _check_model_input(spec.model, kwargs_json, chans, classes, (chans, size, size),
                           f"{size}x{size} images (data.image_size)")
    _check_regularizer_fits(spec.model, kwargs_json, chans, classes, spec.regularizer,
                            json.dumps(spec.regularizer_hparams, sort_keys=True))
    check_engine_support(spec, kind, has_aux_losses(spec.model, spec.model_kwargs, spec.dataset),
                         env_world_size())


def check_engine_support(spec: RunSpec, kind: str, aux: bool, world_size: int = 1) -> None:
    """One-line ConfigError for a combination the fast paths cannot run. The whole-step CUDA
    graph (runtime.compile=graph) gathers image batches from device tensors by a device counter,
    steps SGD with the rate as a constant and reads nothing but (loss, CE, penalty): it takes no
    point clouds, no datasets read from files, no Adam, no BN-momentum schedule and no model auxiliary losses. Distributed runs (world size
    > 1) shard image streams only, and call the model through DDP's forward, which has no
    auxiliary-loss hook: no point clouds, no auxiliary losses (not built yet)."""
    p = spec.protocol
    if world_size > 1 and (kind == "points" or aux):
        why = "point-cloud datasets" if kind == "points" else f"models with auxiliary losses ({spec.model})"
        raise ConfigError(f"distributed runs (world size {world_size}) do not support {why} yet; "
                          "run it as one process")
    if p.runtime.compile == "graph":
        why = ("point-cloud datasets" if kind == "points" else
               f"datasets read from files ({spec.dataset})" if kind == "files" else "optimizer.name=adam"
               if p.optimizer.name == "adam" else "bn_momentum_schedule"
               if p.bn_momentum_schedule is not None else
               f"models with auxiliary losses ({spec.model})" if aux else None)
        if why:
            raise ConfigError(f"runtime.compile=graph does not support {why}; use "
                              "runtime.compile=reduce-overhead, default or off")


def check_packable(specs: list[RunSpec]) -> None:
    """One line if these specs cannot be one packed run: they must differ by seed only."""
    if not specs:
        raise ConfigError("packed run: no runs given")
    key = lambda s: {k: v for k, v in s.identity().items() if k != "seed"}  # noqa: E731
    first = key(specs[0])
    for s in specs[1:]:
        if key(s) != first:
            raise ConfigError(f"packed run: runs must differ by seed only; {specs[0].display_label} "
                              f"and {s.display_label} differ in more")
    seeds = [s.seed for s in specs]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"packed run: seeds must be distinct, got {seeds}")
    spec = specs[0]
    kind = datasets.info(spec.dataset).kind
    if kind != "image":
        what = "point-cloud datasets" if kind == "points" else "datasets read from files"
        raise ConfigError(f"packed run: {what} ({spec.dataset}) cannot be packed; "
                          "run without --pack-seeds")
    if has_aux_losses(spec.model, spec.model_kwargs, spec.dataset):
        raise ConfigError(f"packed run: model '{spec.model}' has auxiliary losses, which packed "
                          "seeds do not support; run without --pack-seeds")


def has_aux_losses(name: str, model_kwargs: dict, dataset: str) -> bool:
    """Whether the model offers auxiliary losses (``forward_with_aux``, docs/internals.md)."""
    model = _meta_model(name, json.dumps(model_kwargs, sort_keys=True), *_input_shape(dataset))
    return callable(getattr(model, "forward_with_aux", None))


def _input_shape(dataset: str) -> tuple[int, int]:
    """(input channels, classes) of a registered dataset, as ``setup`` will build the model."""
    entry = datasets.info(dataset)
    classes = entry.num_classes if entry.arg is None else int(dataset.partition(":")[2] or 10)
    return entry.channels or 3, classes


@functools.lru_cache(maxsize=64)
def _meta_model(name: str, kwargs_json: str, chans: int, classes: int) -> torch.nn.Module:
    """The model on the meta device, built once and shared by the checks below (none of them
    changes it: they read shapes, and the forward runs in eval mode on meta tensors). Unknown
    names and keywords fail here with the registry's one-line message."""
    try:
        with torch.device("meta"):
            model = models.create(name, num_classes=classes, in_chans=chans, **json.loads(kwargs_json))
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc).splitlines()[0]) from None
    model.eval()
    return model


@functools.lru_cache(maxsize=64)
def _check_regularizer_fits(model_name: str, kwargs_json: str, chans: int, classes: int,
                            reg_name: str, hparams_json: str) -> None:
    """The regularizer's shape checks (``Regularizer.check_model``, e.g. G-CoMHE's groups that
    must divide every fan-in) on the meta model, with the roles ``setup`` gives it: a layer it
    cannot act on fails here, not after the data is loaded."""
    model = _meta_model(model_name, kwargs_json, chans, classes)
    roles = dict(getattr(model, "weight_roles", {})) or regularizers.infer_roles(model)
    try:
        regularizers.create(reg_name, **json.loads(hparams_json)).check_model(model, roles)
    except ValueError as exc:
        raise ConfigError(f"{str(exc).splitlines()[0]} (model {model_name})") from None


@functools.lru_cache(maxsize=64)
def _check_model_input(name: str, kwargs_json: str, chans: int, classes: int,
                       shape: tuple[int, ...], what: str) -> None:
    """One forward pass of the meta model with two examples of the run's input ``shape``
    (images (C, H, W), point clouds (P, C)): an input the network cannot take (an image size
    pooled to nothing, point clouds given to an image model) fails here, not after the data is
    loaded. ``what`` names the input and the setting behind it in the message."""
    model = _meta_model(name, kwargs_json, chans, classes)
    try:
        with torch.device("meta"):
            out = model(torch.empty(2, *shape))
    except NotImplementedError:
        return  # an operation without a meta kernel: nothing can be said up front
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as exc:
        raise ConfigError(f"model '{name}' cannot take {what}: "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if tuple(out.shape) != (2, classes):
        raise ConfigError(f"model '{name}' gives outputs of shape {tuple(out.shape)[1:]} for "
                          f"{what}; expected ({classes},)")
