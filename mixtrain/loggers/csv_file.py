"""``logger=csv``: ``metrics.csv`` in the run dir, one row per epoch, for spreadsheets.

The same rows as ``metrics.jsonl``, nested values flattened (``val_ci.acc1.0``, ``val_ci.acc1.1``),
one column per key any epoch has (empty where an epoch lacks it). The file is rewritten whole,
atomically, at every epoch: a key that first appears late (the last epoch's intervals) gets its
column, and a resumed run's file holds exactly the checkpoint's epochs before it goes on.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import Any, Dict

from mixtrain import layout
from mixtrain.files import write_atomic
from mixtrain.loggers.base import Logger, RunInfo, flat_record, register_logger


@dataclass
class CsvConfig:
    """metrics.csv in the run dir: metrics.jsonl as a table, one row per epoch."""

    name: str = "csv"  # the kind of logger (a node of the logger group is read by it)


class CsvLogger(Logger):
    def __init__(self, cfg: CsvConfig) -> None:
        self.cfg, self.path, self.rows = cfg, None, []

    def start(self, run: RunInfo, state: Dict[str, Any]) -> None:
        self.path = run.run_dir / layout.METRICS_CSV
        self.rows = [flat_record(record) for record in run.history]
        if self.rows or run.resumed:
            self.write()

    def log_epoch(self, record: Dict[str, Any], step: int) -> None:
        self.rows.append(flat_record(record))
        self.write()

    def write(self) -> None:
        columns: Dict[str, None] = {}  # in the order keys first appear
        for row in self.rows:
            columns.update(dict.fromkeys(row))

        def rows(f) -> None:
            if not columns:  # a resumed run with no epoch done yet: what a crashed attempt wrote goes
                return
            writer = csv.DictWriter(f, fieldnames=list(columns), restval="", lineterminator="\n")
            writer.writeheader()
            writer.writerows({k: cell(v) for k, v in row.items()} for row in self.rows)

        write_atomic(self.path, rows)

    def where(self) -> Dict[str, Any]:
        return {"kind": "csv", "open": str(self.path)}


def cell(value: Any) -> Any:
    """A value as the CSV shows it: floats in full (``repr``: read back exactly), None empty."""
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else value


register_logger("csv", CsvConfig, lambda cfg, key: CsvLogger(cfg))
