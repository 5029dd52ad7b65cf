"""``mixtrain compare RUN_A RUN_B ... [eval overrides]``: evaluation metrics side by side.

Each argument is a run dir (its ``best.pt``, else ``last.pt``), a checkpoint file, or an
``eval.json`` (or a dir holding one, as ``mixtrain eval`` writes) that is read instead
of evaluating again. Checkpoints are evaluated with the same eval settings (the
``key=value`` arguments, as for ``mixtrain eval``). One table: a row per metric, a
column per run, the best value of each row marked.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from rich.console import Console
from rich.table import Table

from mixtrain import layout
from mixtrain.artifacts.logits import Predictions, load_logits
from mixtrain.config import to_object
from mixtrain.errors import MixtrainError
from mixtrain.evaluate.bootstrap import paired_accuracy, paired_differences
from mixtrain.config.overrides import quote_value
from mixtrain.evaluate.evaluation import dataset_override_keys, eval_overrides, evaluate_checkpoint
from mixtrain.evaluate.tables import METRIC_ROWS, eps_label
from mixtrain.files import claim_dir, first_missing, remove_made_dirs, write_json_atomic
from mixtrain.options import compose

USAGE = """usage: mixtrain compare RUN_OR_CHECKPOINT_OR_EVAL_JSON ... [key=value ...] [--out DIR]

  Runs (best.pt, else last.pt), checkpoint files, or eval.json files of `mixtrain eval`.
  key=value: eval settings for the checkpoints, e.g. heldout=0.5 fgsm_eps=[2,8] dataset.root=DIR;
  --out DIR: where compare.json and each run's eval.json go (default outputs/compare/<date>/<time>).
"""

HIGHER, LOWER = "higher", "lower"


def split_arguments(args: Sequence[str]) -> Tuple[List[str], List[str], Optional[str]]:
    """``(runs, overrides, out)``: ``--out DIR``; an argument that exists as a path is a run, else
    ``key=value`` is an eval override."""
    runs, overrides, out, args = [], [], None, list(args)
    while args:
        arg = args.pop(0)
        if arg == "--out" or arg.startswith("--out="):
            if arg == "--out" and not args:
                raise MixtrainError("--out needs a directory: mixtrain compare RUN ... --out DIR")
            out = args.pop(0) if arg == "--out" else arg.split("=", 1)[1]
        elif arg.startswith("hydra.run.dir="):  # what compare took before --out (it is not a Hydra app)
            out = arg.split("=", 1)[1]
        elif Path(arg).expanduser().exists() or "=" not in arg:
            runs.append(arg)
        else:
            overrides.append(arg)
    return runs, overrides, out


def existing_eval(arg: str) -> Optional[Path]:
    """The ``eval.json`` an argument points at (the file, or a dir holding it and no checkpoint)."""
    path = Path(arg).expanduser()
    if path.is_file() and path.suffix == ".json":
        return path
    if path.is_dir() and (path / layout.EVAL).is_file() and not any((path / n).is_file() for n in (layout.BEST, layout.LAST)):
        return path / layout.EVAL
    return None


def _get(report: Dict[str, Any], *keys) -> Optional[float]:
    node: Any = report
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def comparison_rows(reports: Sequence[Dict[str, Any]]) -> List[Tuple[str, str, Optional[str], List[Optional[float]]]]:
    """``(label, format, better, values per report)`` for every metric any report has."""
    better = {"acc1": HIGHER, "acc5": HIGHER}
    rows: List[Tuple[str, str, Optional[str], List[Optional[float]]]] = []

    def add(label: str, fmt: str, direction: Optional[str], getter: Callable[[Dict[str, Any]], Optional[float]]):
        rows.append((label, fmt, direction, [getter(r) for r in reports]))

    for key, label, fmt in METRIC_ROWS:
        add(label, fmt, better.get(key, LOWER), lambda r, k=key: _get(r, "clean", k))
    add("temperature T", "{:.3f}", None, lambda r: _get(r, "temperature", "value"))
    for key, label in (("nll", "NLL"), ("ece", "ECE")):
        add(f"{label} before T", "{:.4f}", LOWER, lambda r, k=key: _get(r, "temperature", "before", k))
        add(f"{label} after T", "{:.4f}", LOWER, lambda r, k=key: _get(r, "temperature", "after", k))
    levels = sorted({row["eps_255"] for r in reports for row in r.get("fgsm", [])})
    for level in levels:
        add(fgsm_row(level), "{:.2f}", HIGHER,
            lambda r, e=level: next((row["acc1"] for row in r.get("fgsm", []) if row["eps_255"] == e), None))
    return rows


def fgsm_row(level: float) -> str:
    return f"FGSM {eps_label(level)} top-1 (%)"


def best_marks(values: Sequence[Optional[float]], direction: Optional[str]) -> List[bool]:
    """Which values are the best of their row (all ties); none when fewer than two runs have one."""
    present = [v for v in values if v is not None and v == v]
    if direction is None or len(present) < 2:
        return [False] * len(values)
    best = max(present) if direction == HIGHER else min(present)
    return [v is not None and v == best for v in values]


# Rows whose difference is tested by a paired bootstrap on the same images (mixtrain.evaluate.bootstrap),
# and every FGSM row, from the per-image predictions under attack that `mixtrain eval` saves.
PAIRED = {"top-1 (%)": "acc1", "NLL": "nll", "Brier": "brier", "ECE (15 bins)": "ece"}


def paired_tests(reports: Sequence[Dict[str, Any]], logits: Sequence[Optional[Predictions]], labels: Sequence[str],
                 resamples: int = 1000) -> Dict[str, Tuple[bool, str]]:
    """``row label -> (holds, text)``: the best run against the runner-up under a paired bootstrap.

    ``holds`` is whether the 95% interval of the difference excludes zero; runs are paired
    only when both saved their predictions on the same images in the same order.
    """
    tests: Dict[str, Tuple[bool, str]] = {}
    fgsm_rows = {fgsm_row(level): level for r in reports for level in (row["eps_255"] for row in r.get("fgsm", []))}
    for label, fmt, direction, values in comparison_rows(reports):
        key, level = PAIRED.get(label), fgsm_rows.get(label)
        ranked = sorted((i for i, v in enumerate(values) if v is not None and v == v),
                        key=lambda i: -values[i] if direction == HIGHER else values[i])
        if (key is None and level is None) or len(ranked) < 2:
            continue
        best, second = ranked[:2]
        a, b = logits[best], logits[second]
        if (a is None or b is None or not torch.equal(a.labels, b.labels)
                or (level is not None and not (level in a.fgsm and level in b.fgsm))):
            tests[label] = (True, "not paired (no saved predictions on the same images)")
            continue
        if level is None:
            diff, low, high = paired_differences(a.logits, b.logits, a.labels, resamples)[key]
        else:
            diff, low, high = paired_accuracy(a.fgsm[level], b.fgsm[level], a.labels, resamples)
        holds = low > 0 or high < 0
        interval = f"{fmt.format(diff)} [{fmt.format(low)}, {fmt.format(high)}]"
        tests[label] = (holds, f"{labels[best]} vs {labels[second]}: {interval}" + ("" if holds else ", within noise"))
    return tests


def comparison_table(reports: Sequence[Dict[str, Any]], labels: Sequence[str],
                     tests: Optional[Dict[str, Tuple[bool, str]]] = None) -> Table:
    tests = tests or {}
    table = Table(title="* best in its row (higher top-1, lower NLL / Brier / ECE / MCE); on rows with a paired "
                        "test only where the difference to the runner-up holds", title_justify="left")
    table.add_column("metric")
    for label in labels:
        table.add_column(label, justify="right")
    table.add_column("best - runner-up, paired bootstrap 95% interval")
    for label, fmt, direction, values in comparison_rows(reports):
        holds, text = tests.get(label, (True, ""))
        marks = best_marks(values, direction) if holds else [False] * len(values)
        cells = []
        for value, best in zip(values, marks):
            text_value = "-" if value is None else fmt.format(value)
            cells.append(f"[bold green]{text_value}*[/]" if best else f"{text_value} ")
        table.add_row(label, *cells, text)
    return table


def column_labels(reports: Sequence[Dict[str, Any]]) -> List[str]:
    """Each run's recipe name (``ERM``, ``mixup a=0.2``), numbered where two are the same."""
    names = [_get(r, "run", "label") or "run" for r in reports]
    return [f"{name} #{names[:i].count(name) + 1}" if names.count(name) > 1 else name for i, name in enumerate(names)]


def data_line(report: Dict[str, Any]) -> str:
    """What a report was measured on, in words (identical for runs evaluated alike)."""
    temp = report["temperature"]
    return (f"{report['dataset']['name']} val, {report['dataset']['samples']} images; T fitted on {temp['fit_on']}, "
            f"before/after T on {temp['report_on']}")


def evaluate_all(jobs: Sequence[Tuple[str, Any, Any]], out_dir: Path, overrides: Sequence[str],
                 console: Console) -> Tuple[List[Dict[str, Any]], List[Optional[Predictions]]]:
    """Each run's report and predictions: read from its ``eval.json``, or evaluated into ``out_dir/runN``."""
    reports, logits = [], []
    for i, (run, done, cfg) in enumerate(jobs):
        if done is not None:
            try:
                reports.append(json.loads(done.read_text()))
            except (OSError, json.JSONDecodeError) as ex:
                raise MixtrainError(f"{done} is not a readable eval.json ({ex}): run `mixtrain eval` again") from None
            console.print(f"[{i + 1}/{len(jobs)}] {run}: read {done}", highlight=False)
            logits.append(load_logits(done.parent / layout.LOGITS))
            continue
        console.print(f"[{i + 1}/{len(jobs)}] evaluating {run}", highlight=False)
        reports.append(evaluate_checkpoint(cfg, out_dir / f"run{i + 1}", dataset_override_keys(overrides)))
        logits.append(load_logits(out_dir / f"run{i + 1}" / layout.LOGITS))
    return reports, logits


def compare(args: Sequence[str], console: Optional[Console] = None) -> Dict[str, Any]:
    """Evaluate (or read) every run and print the comparison; return what ``compare.json`` holds."""
    console = console or Console(width=None if Console().is_terminal else 120)
    runs, overrides, out = split_arguments(args)
    if not runs:
        raise MixtrainError("name at least one run dir, checkpoint or eval.json to compare (see `mixtrain compare --help`)")
    out_dir = Path(out or time.strftime("outputs/compare/%Y-%m-%d/%H-%M-%S")).expanduser()
    if (out_dir / layout.COMPARE).exists():
        raise MixtrainError(f"{out_dir} already holds a compare.json: pick another --out")

    # Compose and check every run's eval config before evaluating any of them.
    jobs: List[Tuple[str, Any, Any]] = []
    for run in runs:
        done = existing_eval(run)
        if done is not None:
            jobs.append((run, done, None))
            continue
        cfg = compose("eval", eval_overrides([*overrides, f"checkpoint={quote_value(run)}"]))
        jobs.append((run, None, to_object(cfg)))

    made = first_missing(out_dir)
    if not claim_dir(out_dir):
        raise MixtrainError(f"{out_dir} is being written by another mixtrain process: pick another --out")
    try:
        reports, logits = evaluate_all(jobs, out_dir, overrides, console)
    except MixtrainError:
        remove_made_dirs(out_dir, made)  # refused before any run's results were written: no empty --out
        raise

    labels = column_labels(reports)
    tests = paired_tests(reports, logits, labels)
    console.print(comparison_table(reports, labels, tests))
    for label, report in zip(labels, reports):
        console.print(f"{label}: {report['checkpoint']} ({checkpoint_epoch_of(report)})", highlight=False)
    for line in sorted({data_line(r) for r in reports}):
        console.print(line, highlight=False)
    settings = {json.dumps(r.get("eval_config"), sort_keys=True) for r in reports}
    if len(settings) > 1 or len({data_line(r) for r in reports}) > 1:
        console.print("[yellow]note:[/] the runs were evaluated with different settings or data; "
                      "rows may not compare like for like", highlight=False)
    summary = {"runs": [{"label": label, "source": run, "report": report}
                        for label, run, report in zip(labels, runs, reports)],
               "rows": [{"metric": label, "better": direction, "values": values,
                         "paired_test": tests[label][1] if label in tests else None,
                         "holds": tests[label][0] if label in tests else None}
                        for label, _, direction, values in comparison_rows(reports)]}
    write_json_atomic(out_dir / layout.COMPARE, summary)
    console.print(str(out_dir / layout.COMPARE), highlight=False)
    return summary


def checkpoint_epoch_of(report: dict) -> str:
    """Which epoch an eval.json evaluated, numbered from 0; one written before eval.json had a
    ``step`` key counted the epochs done."""
    if "step" not in report:
        return f"after {report['epoch']} epoch(s)"
    return layout.epoch_label(report["epoch"], report["step"])


def main(args: Sequence[str]) -> int:
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if args else 2
    compare(args)
    return 0
