"""When this job started, as far as mixtrain can tell, for a run's ``startup_time`` (metrics.jsonl):
the time up to its first batch.

``import mixtrain`` (light: no torch) starts the clock, so the first run of a process counts importing
torch, reading the data, building the model and starting the loader workers. A process may run many
jobs one after another (a sweep on Hydra's basic launcher, joblib with ``n_jobs=1``, a reused joblib
worker, a script calling ``fit`` in a loop): each later job restarts the clock when it begins
(:func:`start_job`), so that its start-up is its own and not the sum of the jobs before it (issue 36).
"""

import time
from typing import Optional

STARTED = time.perf_counter()
_job_started: Optional[float] = None  # None until the process's first job begins


def start_job() -> None:
    """A run begins in this process: the first keeps the process's start (its imports are its
    start-up); every later one starts the clock now."""
    global _job_started
    _job_started = STARTED if _job_started is None else time.perf_counter()


def since_start() -> float:
    """Seconds since this job began (since the import, before any job has)."""
    return time.perf_counter() - (STARTED if _job_started is None else _job_started)
