"""The eval report on the terminal: calibration before and after temperature scaling, FGSM."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from rich.console import Console
from rich.table import Table

from mixtrain import layout


def _num(value: Optional[float], fmt: str) -> str:
    return "-" if value is None or value != value else fmt.format(value)


# (key, label, format): the calibration rows of the eval table and of `mixtrain compare`.
METRIC_ROWS = [
    ("acc1", "top-1 (%)", "{:.2f}"),
    ("acc5", "top-5 (%)", "{:.2f}"),
    ("nll", "NLL", "{:.4f}"),
    ("brier", "Brier", "{:.4f}"),
    ("ece", "ECE (15 bins)", "{:.4f}"),
    ("mce", "MCE", "{:.4f}"),
    ("adaptive_ece", "adaptive ECE", "{:.4f}"),
    ("classwise_ece", "classwise ECE", "{:.4f}"),
    ("debiased_ece", "debiased L2 CE", "{:.4f}"),
]


def interval_text(bounds: Optional[List[float]], fmt: str) -> str:
    return "" if not bounds else f"[{fmt.format(bounds[0])}, {fmt.format(bounds[1])}]"


def eps_label(level: float) -> str:
    return f"{level:g}/255"


def report_tables(report: Dict[str, Any]) -> List[Table]:
    """The eval report as rich tables: calibration before/after T, then FGSM."""
    temp = report["temperature"]
    table = Table(title=f"{report['dataset']['name']} val, {report['dataset']['samples']} images", title_justify="left")
    intervals = (report.get("bootstrap") or {}).get("clean", {})
    table.add_column("metric")
    table.add_column(f"all ({report['dataset']['samples']})", justify="right")
    table.add_column("95% interval", justify="right")
    table.add_column(f"T=1 ({temp['report_samples']})", justify="right")
    table.add_column(f"T={temp['value']:.3f} ({temp['report_samples']})", justify="right")
    for key, label, fmt in METRIC_ROWS:
        table.add_row(label, _num(report["clean"][key], fmt), interval_text(intervals.get(key), fmt),
                      _num(temp["before"][key], fmt), _num(temp["after"][key], fmt))
    tables = [table]
    if report["fgsm"]:
        fgsm = Table(title="FGSM (white-box)", title_justify="left")
        fgsm.add_column("eps")
        for row in report["fgsm"]:
            fgsm.add_column(eps_label(row["eps_255"]), justify="right")
        fgsm.add_row("top-1 (%)", *(_num(row["acc1"], "{:.2f}") for row in report["fgsm"]))
        tables.append(fgsm)
    return tables


def print_report(report: Dict[str, Any], out_dir: Path, console: Console) -> None:
    for table in report_tables(report):
        console.print(table)
    temp = report["temperature"]
    bound = " (at the search bound: the held-out data does not pin T down)" if temp["at_bound"] else ""
    console.print(f"temperature T={temp['value']:.4f}{bound} fitted on {temp['fit_on']}; the T columns are "
                  f"{temp['report_on']}", highlight=False)
    boot = report.get("bootstrap")
    if boot:
        console.print(f"95% intervals: percentile bootstrap over the {report['dataset']['samples']} val images "
                      f"({boot['resamples']} resamples, seed {boot['seed']})", highlight=False)
    if report["fgsm"]:
        console.print("FGSM eps: pixel levels of 1/255 on [0, 1] images, before normalization", highlight=False)
    console.print(f"{Path(out_dir) / layout.EVAL}  {Path(out_dir) / layout.RELIABILITY}", highlight=False)
