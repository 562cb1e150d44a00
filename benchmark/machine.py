"""The machine a run ran on, and the float perturbations that stand in for another machine.

Two runs of one set-up and seed give bit-identical records only on the same software stack and
the same kernels. Another CPU changes which vectorized kernels torch, oneDNN and MKL dispatch to
(AVX-512 here, AVX2 there), and so the rounding of every reduction; another thread count changes
how reductions are split. :func:`facts` collects what explains such a difference; it goes into
every record under ``machine`` and is never part of a run's identity (the set-up is the same).

:func:`isa_perturbation` gives the environment variables that make *this* machine dispatch like
one with a lower instruction-set level: the controlled perturbation `benchmark sensitivity`
trains under to measure a protocol's own numerical noise (docs/sweeps.md).
"""

from __future__ import annotations

import platform
import re
from functools import lru_cache
from typing import Any

import torch

# ATen's dispatch levels on x86-64, lowest first (torch.backends.cpu.get_cpu_capability()), with
# the matching oneDNN (ONEDNN_MAX_CPU_ISA) and MKL (MKL_ENABLE_INSTRUCTIONS) caps: lowering all
# three makes this CPU run the kernels an older one would.
_ISA_LEVELS = (("DEFAULT", "SSE41", "SSE4_2"), ("AVX2", "AVX2", "AVX2"),
               ("AVX512", "AVX512_CORE", "AVX512"))
# Fields of `facts` that describe the CPU side; `compare` lists each one that differs.
CPU_FIELDS = ("cpu_model", "cpu_vendor", "cpu_capability", "blas", "onednn", "openmp",
              "intra_op_threads")
CUDA_FIELDS = ("cuda_device", "cuda_driver", "cuda_runtime", "cudnn", "deterministic_algorithms",
               "cudnn_deterministic", "cudnn_benchmark")


@lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """'model name' and 'vendor_id' of /proc/cpuinfo (Linux); platform's answer elsewhere."""
    out = {"model": platform.processor() or platform.machine(), "vendor": "unknown"}
    try:
        text = open("/proc/cpuinfo", encoding="utf-8", errors="replace").read()
    except OSError:
        return out
    for key, field in (("model name", "model"), ("vendor_id", "vendor"), ("CPU implementer", "vendor")):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.M)
        if m:
            out[field] = m.group(1).strip()
    return out


@lru_cache(maxsize=1)
def _build() -> dict[str, str]:
    """The BLAS / oneDNN / OpenMP builds torch was compiled with, one short string each."""
    show = torch.__config__.show()

    def find(pattern: str) -> str:
        m = re.search(pattern, show)
        return m.group(1).strip() if m else "none"

    blas = find(r"BLAS_INFO=([^,\s]+)")
    mkl = find(r"Math Kernel Library Version ([^\s]+)")
    return {"blas": blas + (f" (MKL {mkl})" if mkl != "none" else ""),
            "onednn": find(r"MKL-DNN (v[^\s]+)"),
            "openmp": find(r"OpenMP (\d+)")}


def facts(device: torch.device | str | None = None) -> dict[str, Any]:
    """What may explain a numerical difference between two runs of one set-up: the CPU and its
    dispatch level, the math libraries, the intra-op threads in use, and on CUDA the card, driver,
    CUDA and cuDNN versions and the determinism settings. JSON-able; ``None`` for what cannot be
    known here (a CPU-only run records no CUDA fields)."""
    cpu = _cpuinfo()
    out: dict[str, Any] = {
        "cpu_model": cpu["model"], "cpu_vendor": cpu["vendor"], "arch": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        **_build(), "intra_op_threads": torch.get_num_threads(),
    }
    if device is not None and torch.device(device).type == "cuda":
        index = torch.device(device).index or 0
        driver = None
        try:  # the driver version through NVML, when pynvml / nvidia-ml-py is installed
            import pynvml  # noqa: PLC0415 - optional, CUDA machines only

            pynvml.nvmlInit()
            driver = pynvml.nvmlSystemGetDriverVersion()
            driver = driver.decode() if isinstance(driver, bytes) else driver
        except Exception:  # noqa: BLE001 - absent or failing NVML: unknown, not an error
            driver = None
        out.update({
            "cuda_device": torch.cuda.get_device_name(index),
            "cuda_capability": ".".join(map(str, torch.cuda.get_device_capability(index))),
            "cuda_driver": driver, "cuda_runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        })
    return out


def isa_perturbation(capability: str | None = None) -> dict[str, str] | None:
    """Environment variables that make this machine's torch, oneDNN and MKL dispatch one
    instruction-set level lower (AVX-512 -> AVX2, AVX2 -> the baseline SSE kernels): the
    kernels, and so the rounding, of an older CPU of the same architecture. None where there is
    no lower level (the baseline already, or not x86-64), and the caller must perturb otherwise.
    They take effect only in a process started with them (torch reads them at import)."""
    capability = (capability or torch.backends.cpu.get_cpu_capability()).upper()
    names = [level[0] for level in _ISA_LEVELS]
    if capability not in names or names.index(capability) == 0:
        return None
    aten, onednn, mkl = _ISA_LEVELS[names.index(capability) - 1]
    return {"ATEN_CPU_CAPABILITY": aten.lower(), "ONEDNN_MAX_CPU_ISA": onednn,
            "MKL_ENABLE_INSTRUCTIONS": mkl}
