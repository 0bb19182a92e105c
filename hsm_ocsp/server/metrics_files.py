"""Metrics shared by the workers: prometheus_client's multiprocess mode.

With ``workers > 1`` the parent calls :func:`prepare_multiprocess` before it forks:
every worker then writes its samples to files in one directory and any worker's
``/metrics`` sums all of them. Counter and histogram files of a dead worker stay, so
its counts are not lost; :func:`process_dead` drops only its ``live*`` gauge values.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from prometheus_client import (
    multiprocess,
    values,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess() -> str:
    """Give the workers a fresh, empty metrics directory; call before forking.

    Sets PROMETHEUS_MULTIPROC_DIR and makes prometheus-client write values to
    files in it. prometheus-client chooses its value store when it is first
    imported, which in this process has already happened, so it chooses again
    here; metric objects are only created later, in the workers.
    """
    directory = tempfile.mkdtemp(prefix="hsm-ocsp-metrics-")
    os.environ[MULTIPROC_ENV] = directory
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return directory


def process_dead(pid: int) -> None:
    """A worker ended: forget its live gauges, keep its counters."""
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def remove_multiprocess_dir(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    if os.environ.get(MULTIPROC_ENV) == directory:
        del os.environ[MULTIPROC_ENV]
