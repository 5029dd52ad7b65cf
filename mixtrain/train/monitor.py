"""What a run reports: a rich progress bar and epoch table, train.log, metrics.jsonl (trackers: the
``logger`` group, :mod:`mixtrain.train.tracking`)."""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Dict, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from mixtrain import layout
from mixtrain.files import open_append, write_text_atomic

# (key in the epoch record, header, format, width): 80 columns in all with one space between, 88 with EMA.
OPTIONAL = {"ema_val_acc1"}
COLUMNS = [
    ("epoch", "epoch", "{:d}", 5),
    ("train_loss", "train loss", "{:.4f}", 10),
    ("train_acc", "train acc*", "{:.2f}", 10),
    ("val_nll", "val NLL", "{:.4f}", 7),
    ("val_acc1", "val acc", "{:.2f}", 7),
    ("val_ece", "val ECE", "{:.4f}", 7),
    ("val_ece_ts", "ECE T", "{:.4f}", 6),
    ("ema_val_acc1", "EMA acc", "{:.2f}", 7),  # only when the record has it (trainer.ema.enabled)
    ("lr", "lr", "{:.2e}", 8),
    ("img_per_s", "img/s", "{:.0f}", 5),
    ("epoch_time", "time", "{:.0f}s", 5),
]
TRAIN_ACC_NOTE = ("* train acc: top-1 against the dominant label of each (mixed, smoothed) training target; "
                  "ECE T: val ECE after temperature scaling, T fitted on the other half of val")


def _quiet_tensorboard_disk_errors(args) -> None:
    """TensorBoard writes its events from a thread of its own: an OSError there (a full disk, the run dir
    removed) reaches the run on its next write to TensorBoard, which says it in one line; the thread's
    own traceback would only repeat it."""
    if isinstance(args.exc_value, OSError) and type(args.thread).__module__.startswith("tensorboard."):
        return
    _excepthook(args)


_excepthook = threading.excepthook
threading.excepthook = _quiet_tensorboard_disk_errors


def append_jsonl(path: Path, record: dict) -> None:
    """Append one line and fsync it: a crash can lose the line being written, never earlier ones."""
    with open_append(path) as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def reconcile_metrics(path: Path, history: list) -> Optional[str]:
    """Make ``metrics.jsonl`` hold exactly the epochs of a checkpoint being resumed; return what was
    done, in words (None when the file already held them).

    Lines the checkpoint has but the file lacks (a crash between the two writes) are added. A file
    that holds anything else (epochs the checkpoint has not reached: a crashed attempt, or an older
    checkpoint; a damaged line; a folder in its place) is set aside whole as
    ``metrics.jsonl.replaced-<time>``, never deleted, and the file is written from the checkpoint.
    """
    wanted = [json.dumps(record) for record in history]
    if not os.path.lexists(path):
        lines = []
    elif path.is_file():
        lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    else:
        lines = None  # a folder, ...: set aside
    if lines == wanted:
        return None
    note = f"{path.name} lacked {len(wanted) - len(lines or [])} epoch(s) of the checkpoint: added"
    if lines is None or lines != wanted[:len(lines)]:
        aside = path.with_name(f"{path.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        os.rename(path, aside)
        note = f"{path.name} did not match the checkpoint's {len(wanted)} epoch(s): set aside as {aside.name}"
    write_text_atomic(path, "".join(line + "\n" for line in wanted))
    return note


def _fmt(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


class RunMonitor:
    """Prints to the terminal and train.log, and writes ``metrics.jsonl``."""

    def __init__(self, run_dir: Path, enabled: bool = True, console: Optional[Console] = None) -> None:
        self.run_dir = run_dir
        self.enabled = enabled  # False on non-zero ranks: they stay silent
        # Off a terminal (logs, CI) rich assumes 80 columns, too narrow for the epoch table.
        self.console = console or Console(width=None if Console().is_terminal else 120)
        self.log = None  # train.log in the run dir: the same lines as the terminal, as plain text
        self._header_printed = False
        self._warned: set = set()
        self._bar, self._task = None, None
        self.optional_columns: set = set()  # which OPTIONAL columns this run's table shows
        if enabled:
            self.log = Console(file=open_append(run_dir / layout.TRAIN_LOG), width=120, no_color=True,
                               force_terminal=False, highlight=False, soft_wrap=True)

    def print(self, renderable, **kwargs) -> None:
        """To the terminal and to train.log."""
        if self.enabled:
            self.console.print(renderable, highlight=False, **kwargs)
            self.log.print(renderable, highlight=False, **kwargs)
            self.log.file.flush()

    def info(self, message: str) -> None:
        self.print(message, soft_wrap=True)  # one line, however long: logs are grepped

    def warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.info(f"[yellow]warning:[/] {message}")

    def sync_line(self, epoch: int, step: int, steps: int, loss: float, rate: float, eta: float) -> None:
        """At a sync point: the bar's status on a terminal; a plain progress line in train.log,
        and on the terminal when it is not one (a log file, SLURM), where no bar shows."""
        if not self.enabled:
            return
        eta = int(eta) if math.isfinite(eta) else 0
        line = f"epoch {epoch} step {step}/{steps} loss {loss:.4f} {rate:.0f} img/s ETA {eta // 60}:{eta % 60:02d}"
        if self._bar is not None and self.console.is_terminal:
            self._bar.update(self._task, status=f"loss {loss:.4f}  {rate:.0f} img/s")
        else:
            self.console.print(line, highlight=False, soft_wrap=True)
        self.log.print(line)
        self.log.file.flush()

    def start_progress(self, epoch: int, total_steps: int, start: int = 0) -> None:
        """A transient progress bar for the epoch (on a terminal); :meth:`advance` moves it."""
        self.stop_progress()
        bar = Progress(TextColumn(f"epoch {epoch}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[status]}"), TimeRemainingColumn(),
                       console=self.console, transient=True, disable=not (self.enabled and self.console.is_terminal))
        bar.start()
        self._bar, self._task = bar, bar.add_task("train", total=total_steps, completed=start, status="")

    def stop_progress(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)

    def epoch_end(self, record: Dict[str, float]) -> None:
        """One epoch's record: a metrics.jsonl line and a table row."""
        if not self.enabled:
            return
        append_jsonl(self.run_dir / layout.METRICS, record)
        # Fixed widths, one space apart: rows printed one by one line up, within 80 columns.
        table = Table(show_header=not self._header_printed, box=None, show_edge=False, padding=(0, 0, 0, 1))
        columns = [c for c in COLUMNS if c[0] not in OPTIONAL or c[0] in self.optional_columns]
        for _, header, _, width in columns:
            table.add_column(header, justify="right", width=width, no_wrap=True)
        table.add_row(*(_fmt(record.get(key), fmt) for key, _, fmt, _ in columns))
        if not self._header_printed:
            self.print(TRAIN_ACC_NOTE, style="dim")
        self._header_printed = True
        self.print(table)
        if "startup_time" in record:
            self.print(f"start-up {record['startup_time']:.1f}s to the first batch; outside training (evaluation and "
                       f"its extras) {record['eval_time']:.1f}s of this epoch's {record['epoch_time']:.1f}s", style="dim")

    def close(self) -> None:
        """Flush and close what the run writes; a dir that a full disk or a removal has taken leaves them
        unwritten (the run's end was said already)."""
        self.stop_progress()
        if self.log is not None:
            try:
                self.log.file.close()
            except OSError:
                pass
            self.log = None
