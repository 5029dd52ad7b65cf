"""When this process started, as far as mixtrain can tell: ``import mixtrain`` (light: no torch) starts
the clock, so a run's ``startup_time`` (metrics.jsonl) covers importing torch, reading the data,
building the model and starting the loader workers, up to the first batch."""

import time

STARTED = time.perf_counter()


def since_start() -> float:
    return time.perf_counter() - STARTED
