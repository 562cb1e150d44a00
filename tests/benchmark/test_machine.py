"""benchmark.machine: the facts a record keeps about its machine, and the ISA perturbation."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from benchmark.machine import CPU_FIELDS, facts, isa_perturbation


def test_facts_name_the_cpu_side_and_no_cuda_on_a_cpu_run():
    f = facts("cpu")
    assert set(CPU_FIELDS) <= set(f)
    assert f["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert f["intra_op_threads"] == torch.get_num_threads()
    assert f["blas"] and f["cpu_model"] and not any(k.startswith("cuda") for k in f)


@pytest.mark.parametrize("level, expected", [
    ("AVX512", {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                "MKL_ENABLE_INSTRUCTIONS": "AVX2"}),
    ("AVX2", {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
              "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}),
    ("DEFAULT", None), ("NO AVX", None)])
def test_isa_perturbation_goes_one_level_down(level, expected):
    assert isa_perturbation(level) == expected


def test_the_perturbation_reaches_torch_in_a_new_process():
    env = isa_perturbation()
    if env is None:
        pytest.skip("this CPU dispatches to the lowest level already")
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                         env={**os.environ, **env}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == env["ATEN_CPU_CAPABILITY"].upper()
