"""Sweeps: many runs over one results directory, crash-safe and resumable, on this machine or on
Slurm.

``claims.py`` (who runs what: records, locks) -> ``attempt.py`` (one run under its lock) ->
``local.py`` (this machine: in process or worker processes, ``worker.py``) and ``slurm.py``
(a job array through submitit; ``slurm_jobs.py``: what Slurm knows) -> ``dispatch.py`` (``execute``, the
one entry point). ``status.py`` reads where a suite stands without writing anything.
"""

from benchmark.sweep.attempt import pack_by_seed, try_run, try_run_pack
from benchmark.sweep.claims import BUSY, SKIPPED, prepare_results_dir, write_failure_record
from benchmark.sweep.dispatch import EXECUTORS, execute
from benchmark.sweep.local import RunSummary, run_suite, visible_cuda_devices
from benchmark.sweep.slurm import RunTask, SlurmOptions, submit_slurm
from benchmark.sweep.status import count_states, format_status, suite_status

__all__ = ["BUSY", "EXECUTORS", "RunSummary", "RunTask", "SKIPPED", "SlurmOptions", "count_states",
           "execute", "format_status", "pack_by_seed", "prepare_results_dir", "run_suite",
           "submit_slurm", "suite_status", "try_run", "try_run_pack", "visible_cuda_devices",
           "write_failure_record"]
