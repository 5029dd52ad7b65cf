"""``mixtrain report PATH...``: runs and sweeps as one table, two CSV files and a plot.

Runs (see :mod:`mixtrain.runs.dirs`) are grouped by the config values that differ between
them, the seed aside, and each group gets the mean and sample std over its completed
runs of the best checkpoint's top-1 (``best.pt``'s epoch, picked by the objective) and the final
one, final ECE and NLL. A run that did not complete is
counted in its group and listed with its status, never dropped.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Dict, Sequence

from rich.console import Console
from rich.table import Table

from mixtrain import layout
from mixtrain.errors import CommandParser, MixtrainError
from mixtrain.files import claim_dir, write_atomic
from mixtrain.loggers.base import report_lines
from mixtrain.runs.dirs import COMPLETED, METRICS, STATUSES, Run, collect
from mixtrain.runs.groups import MISSING_VALUE, Group, differing_keys, format_value, group_runs, status_counts
from mixtrain.runs.plots import write_plot

# Column header and number format of each of runs.METRICS.
METRIC_COLUMNS = {"best_val_acc1": ("best.pt top-1", "{:.2f}"), "final_val_acc1": ("final top-1", "{:.2f}"),
                  "final_val_ece": ("final ECE", "{:.4f}"), "final_val_ece_ts": ("ECE after T", "{:.4f}"),
                  "final_val_nll": ("final NLL", "{:.4f}")}
# Bootstrap intervals of the pooled final predictions (each run's val_logits.pt): metric -> column.
POOLED = {"acc1": ("top-1 95% (pooled)", "{:.2f}"), "ece": ("ECE 95% (pooled)", "{:.4f}")}


# --------------------------------------------------------------------------- output


def format_stat(mean: float, std: float, fmt: str) -> str:
    if math.isnan(mean):
        return MISSING_VALUE
    return fmt.format(mean) + ("" if math.isnan(std) else " ± " + fmt.format(std))


def status_text(counts: Dict[str, int]) -> str:
    return ", ".join(f"{n} {status}" for status, n in counts.items())


def _display_path(path: Path, roots: Sequence[Path]) -> str:
    for root in roots:
        try:
            return str(path.relative_to(root)) or "."
        except ValueError:
            continue
    return str(path)


def summary_table(groups: Sequence[Group], keys: Sequence[str]):

    table = Table(title="runs grouped by the config values that differ (mean ± std over seeds)", title_justify="left")
    for key in keys or ["runs"]:
        table.add_column(key, no_wrap=True)
    table.add_column("seeds", justify="right")
    for metric in METRICS:
        table.add_column(METRIC_COLUMNS[metric][0], justify="right", no_wrap=True)
    intervals = [group.pooled_intervals() for group in groups]
    pooled = [m for m in POOLED if any(m in i for i in intervals)]
    for metric in pooled:
        table.add_column(POOLED[metric][0], justify="right", no_wrap=True)
    if any(len(g.completed) < len(g.runs) for g in groups):
        table.add_column("not completed", overflow="fold")
    for group, interval in zip(groups, intervals):
        cells = [format_value(v) for v in group.values] if keys else ["all"]
        cells.append(str(group.seeds))
        cells += [format_stat(*group.stats(m), METRIC_COLUMNS[m][1]) for m in METRICS]
        fmt = {m: POOLED[m][1] for m in pooled}
        cells += [f"[{fmt[m].format(interval[m][0])}, {fmt[m].format(interval[m][1])}]" if m in interval else "-"
                  for m in pooled]
        if len(table.columns) > len(cells):
            counts = {s: n for s, n in group.status_counts().items() if s != COMPLETED}
            cells.append(status_text(counts))
        table.add_row(*cells)
    return table


def incomplete_table(runs: Sequence[Run], keys: Sequence[str], roots: Sequence[Path]):

    table = Table(title="runs that did not complete", title_justify="left")
    for header in ("run", *keys, "seed", "status", "epochs", "last top-1", "detail"):
        table.add_column(header, overflow="fold")
    for run in runs:
        epochs = f"{run.epochs_done}/{run.epochs_total if run.epochs_total is not None else '?'}"
        last = MISSING_VALUE if math.isnan(run.last_val_acc1) else f"{run.last_val_acc1:.2f}"
        table.add_row(_display_path(run.path, roots), *(format_value(run.params.get(k, MISSING_VALUE)) for k in keys),
                      format_value(run.seed) if run.seed is not None else MISSING_VALUE, run.status, epochs, last,
                      run.detail)
    return table


def write_group_csv(path: Path, groups: Sequence[Group], keys: Sequence[str]) -> Path:
    write_atomic(path, lambda f: _write_group_rows(f, groups, keys))
    return path


def _write_group_rows(f, groups: Sequence[Group], keys: Sequence[str]) -> None:
    writer = csv.writer(f)
    writer.writerow([*keys, "seeds", *[f"{s.replace(' ', '_')}_runs" for s in STATUSES],
                     *[f"{m}_{stat}" for m in METRICS for stat in ("mean", "std")],
                     *[f"pooled_{m}_{end}" for m in POOLED for end in ("low", "high")]])
    for group in groups:
        counts = group.status_counts()
        stats = [v for m in METRICS for v in group.stats(m)]
        interval = group.pooled_intervals()
        writer.writerow([*(format_value(v) for v in group.values),
                         group.seeds,
                         *[counts.get(s, 0) for s in STATUSES],
                         *["" if math.isnan(v) else repr(v) for v in stats],
                         *[repr(v) for m in POOLED for v in interval.get(m, ["", ""])]])


def write_runs_csv(path: Path, runs: Sequence[Run], keys: Sequence[str], roots: Sequence[Path]) -> Path:
    write_atomic(path, lambda f: _write_run_rows(f, runs, keys, roots))
    return path


def _write_run_rows(f, runs: Sequence[Run], keys: Sequence[str], roots: Sequence[Path]) -> None:
    writer = csv.writer(f)
    writer.writerow(["run", *keys, "seed", "status", "epochs_done", "epochs", *METRICS, "last_val_acc1", "detail"])
    for run in runs:
        writer.writerow([_display_path(run.path, roots), *(format_value(run.params.get(k, MISSING_VALUE)) for k in keys),
                         run.seed, run.status, run.epochs_done, run.epochs_total,
                         *[repr(run.metrics[m]) if m in run.metrics else "" for m in METRICS],
                         "" if math.isnan(run.last_val_acc1) else repr(run.last_val_acc1), run.detail])


OUTPUTS = layout.REPORT_FILES


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Take ``out_dir`` for the report's files: lock it (never while a run or sweep writes it) and
    refuse to replace an earlier report unless asked."""
    found = [name for name in OUTPUTS if (out_dir / name).exists()]
    if found and not overwrite:
        raise MixtrainError(f"{out_dir} already holds {found[0]}: pass --overwrite to replace the report, or "
                            "--out another dir")
    try:
        claimed = claim_dir(out_dir)
    except OSError as ex:
        raise MixtrainError(f"cannot write the report into {out_dir} ({ex.strerror}): pass --out DIR") from None
    if not claimed:
        raise MixtrainError(f"{out_dir} is being written by a running mixtrain process: pass --out DIR to report "
                            "on it while it runs")


def report(paths: Sequence[Path], out_dir: Path, console=None, overwrite: bool = False) -> Dict[str, Any]:
    """Print the tables; write ``report.csv``, ``runs.csv`` and ``report.png`` into ``out_dir``."""

    console = console or Console(width=None if Console().is_terminal else 160)
    paths = [Path(p).expanduser() for p in paths]
    runs = collect(paths)
    if not runs:
        raise MixtrainError(f"no runs under {', '.join(map(str, paths))}: expected run directories with "
                            "summary.json, metrics.jsonl or .hydra/ (e.g. outputs/multirun/<date>/<time>)")
    check_out_dir(out_dir, overwrite)
    keys = differing_keys(runs)
    groups = group_runs(runs, keys)
    roots = [p.resolve() for p in paths] + [Path.cwd()]
    console.print(summary_table(groups, keys))
    incomplete = [r for r in runs if r.status != COMPLETED]
    if incomplete:
        console.print(incomplete_table(incomplete, keys, roots))
    written = {
        "report.csv": write_group_csv(out_dir / "report.csv", groups, keys),
        "runs.csv": write_runs_csv(out_dir / "runs.csv", runs, keys, roots),
        "report.png": write_plot(out_dir / "report.png", groups, keys),
    }
    for run in runs:  # damaged files read around: said, never silently taken for data
        for note in run.notes:
            console.print(f"note: {_display_path(run.path, roots)}: {note}", highlight=False)
    console.print(f"{len(runs)} runs ({status_text(status_counts(runs))}) in {len(groups)} group(s); wrote "
                  + ", ".join(str(p) for p in written.values() if p is not None), highlight=False)
    # Where the same runs are in the trackers they logged to (logger=mlflow, wandb, ...), and how to open them.
    wheres = [where for run in runs for where in run.loggers.values()]
    for line in report_lines(wheres, [p for p in written.values() if p is not None]):
        console.print(line, highlight=False, soft_wrap=True)
    return {"runs": runs, "keys": keys, "groups": groups, **written}


USAGE = """usage: mixtrain report PATH... [--out DIR] [--overwrite]

Summarize run directories and sweep directories (outputs/multirun/<date>/<time>):
a table grouped by the config values that differ (mean ± std over seeds of best and
final top-1, final ECE and NLL), report.csv (one row per group), runs.csv (one row per
run, with its status) and report.png (top-1 and ECE against the swept alpha). Runs that
logged to a tracker (the logger group) get a line saying how to open them there; a
sweep's MLflow parent run also gets the report's files.
--out DIR     where to write the files (default: PATH when there is one, else .)
--overwrite   replace the files of an earlier report there
"""


def main(args: Sequence[str]) -> int:
    parser = CommandParser("mixtrain report", USAGE, "mixtrain report PATH... [--out DIR] [--overwrite]")
    parser.add_argument("paths", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--overwrite", action="store_true")
    parsed = parser.parse(args)
    if parsed is None:
        return 0
    if not parsed.paths:
        raise MixtrainError("give at least one run or sweep directory: mixtrain report outputs/multirun/<date>/<time>")
    out = parsed.out or (parsed.paths[0] if len(parsed.paths) == 1 else Path("."))
    report(parsed.paths, out.expanduser(), overwrite=parsed.overwrite)
    return 0
