"""``debug=profile``'s instruments: ``torch.profiler`` over steps of the real config, and the time
each step waited for its batch.

:class:`TimedLoader` wraps the training loader and times every ``next`` on it; :class:`Profiler`
is the part that starts the profiler, steps it, and at the end writes the Chrome trace, the top
operators by self time and the share of step time spent waiting for data into ``profile/`` of the
run dir (:mod:`mixtrain.layout` names them).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import torch

from mixtrain import layout
from mixtrain.files import TEMP_PREFIX, TEMP_SUFFIX, write_text_atomic
from mixtrain.train.engine import Part, Trainer
from mixtrain.train.monitor import RunMonitor


class TimedLoader:
    """A training loader that times how long the step waited for each batch, for at most ``limit``
    batches an epoch (the profiled run stops after them)."""

    def __init__(self, loader, limit: int) -> None:
        self.loader, self.limit = loader, limit
        self.waits: List[float] = []  # seconds per batch of the current epoch

    def __getattr__(self, name: str):  # num_samples, unreadable, ...: the loader's own
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return min(len(self.loader), self.limit)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def iter_from(self, start_step: int = 0) -> Iterator:
        self.waits = []
        batches = self.loader.iter_from(start_step)
        for _ in range(start_step, len(self)):
            t = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                return
            self.waits.append(time.perf_counter() - t)
            yield batch

    def __iter__(self) -> Iterator:
        return self.iter_from(0)


class Profiler(Part):
    """``torch.profiler`` over the steps after the warmup, then the trace, the operators and the data wait."""

    name = "profile"

    def __init__(self, cfg: Any, loader: TimedLoader, device: torch.device, out: Path, monitor: RunMonitor) -> None:
        self.cfg, self.loader, self.device, self.out, self.monitor = cfg, loader, device, out, monitor
        self.profiler: Optional[torch.profiler.profile] = None
        self.intervals: List[float] = []  # each step's wall time, its wait for the batch included
        self.found: Dict[str, Any] = {}

    def epoch_start(self, trainer: Trainer, steps: int) -> None:
        if self.profiler is None and not self.found:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(activities=activities, schedule=torch.profiler.schedule(
                wait=max(self.cfg.warmup - 1, 0), warmup=min(self.cfg.warmup, 1), active=self.cfg.steps, repeat=1))
            self.profiler.start()
        self.last = time.perf_counter()

    def step_end(self, trainer: Trainer, out) -> None:
        if self.profiler is None:
            return
        if self.device.type == "cuda":  # a step's time is its kernels' too, not only their launch
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.intervals.append(now - self.last)
        self.last = now
        self.profiler.step()
        if len(self.intervals) == self.cfg.warmup + self.cfg.steps:
            self.finish()

    def stop(self, trainer: Trainer, error: Optional[BaseException]) -> None:
        if self.profiler is not None:  # the epoch had fewer steps than warmup + steps
            self.finish()

    def finish(self) -> None:
        profiler, self.profiler = self.profiler, None
        profiler.stop()
        warmup = self.cfg.warmup
        steps = self.intervals[warmup:]
        waits = self.loader.waits[warmup:warmup + len(steps)]
        self.out.mkdir(parents=True, exist_ok=True)
        trace, operators = self.out / layout.PROFILE_TRACE, self.out / layout.PROFILE_OPERATORS
        if steps:
            export_chrome_trace(profiler, trace)
            sort = "self_cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
            write_text_atomic(operators, profiler.key_averages().table(sort_by=sort, row_limit=self.cfg.rows) + "\n")
        share = sum(waits) / sum(steps) if steps else float("nan")
        self.found = {"steps": len(steps), "warmup": warmup, "step_s": sum(steps) / max(len(steps), 1),
                      "data_wait_s": sum(waits) / max(len(waits), 1), "data_wait_share": share,
                      "trace": layout.PROFILE_TRACE if steps else None,
                      "operators": layout.PROFILE_OPERATORS if steps else None}
        write_text_atomic(self.out / layout.PROFILE_SUMMARY, json.dumps(self.found, indent=2))
        if not steps:
            self.monitor.info(f"[yellow]debug=profile: the epoch ended within the {warmup} warmup steps[/]: nothing "
                              "was profiled; lower debug.warmup or raise trainer.limit_train_batches")
            return
        self.monitor.info(f"debug=profile: {len(steps)} steps after {warmup} warmup, {self.found['step_s'] * 1e3:.1f} "
                          f"ms a step, of which {100 * share:.1f}% waiting for the batch; trace {trace} "
                          f"(ui.perfetto.dev), top operators {operators}")


def export_chrome_trace(profiler, path: Path) -> None:
    """The profiler's Chrome trace at ``path``, whole or not at all (through a temp file, renamed)."""
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        profiler.export_chrome_trace(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
