"""The tables of docs/evidence from the study's run dirs (scripts/evidence_study.sh).

Per arm: mean +- sample std over seeds of best and final top-1, train accuracy at the last
epoch, final ECE, ECE after temperature scaling, NLL, and FGSM top-1 at 2/255 and 8/255
(from each run's `mixtrain eval` of last.pt). Per claim: the paired difference against its
baseline on the pooled final predictions of all seeds (seed k of one arm with seed k of
the other, the same validation images), with a 95% bootstrap interval: top-1, NLL and ECE from the
final validation logits; ECE after T and FGSM 2/255 top-1 from each run's `mixtrain eval` (its own
T, fitted on half of the images, applied to the other half; its per-image FGSM predictions).

    python scripts/evidence_tables.py outputs/evidence --out docs/evidence
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

import torch

from mixtrain.artifacts.logits import load_logits
from mixtrain.evaluate.bootstrap import paired_accuracy, paired_differences
from mixtrain.evaluate.calibration import heldout_indices

COLUMNS = [("seeds", None), ("best top-1", "best_val_acc1"), ("final top-1", "final_val_acc1"),
           ("train acc (last epoch)", "train_acc"), ("final ECE", "final_val_ece"),
           ("ECE after T", "final_val_ece_ts"), ("final NLL", "final_val_nll"),
           ("FGSM 2/255", "fgsm_2"), ("FGSM 8/255", "fgsm_8")]
# (label, arm, baseline): the paired comparisons of the study's claims.
CLAIMS = [("mixup a=0.2 vs ERM", "mixup02", "erm"), ("mixup a=1 vs ERM", "mixup1", "erm"),
          ("CutMix a=1 vs ERM", "cutmix1", "erm"), ("mixup a=1 vs ERM, 20% noise", "noise20_mixup1", "noise20_erm"),
          # the mixing family (issue 24), against ERM and against the best mixup of the study
          *((f"{label} vs {base_label}", arm, base) for arm, label in (
              ("fmix1", "FMix a=1"), ("resizemix", "ResizeMix"), ("saliencymix1", "SaliencyMix a=1"),
              ("smoothmix", "SmoothMix")) for base, base_label in (("erm", "ERM"), ("mixup02", "mixup a=0.2")))]


def read_run(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    if summary.get("status") != "completed":
        return {}
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    row = {k: summary[k] for k in ("best_val_acc1", "final_val_acc1", "final_val_ece", "final_val_ece_ts",
                                   "final_val_nll", "wall_time_s")}
    row["train_acc"] = lines[-1]["train_acc"]
    evaluated = run / "eval" / "eval.json"
    if evaluated.is_file():
        for attack in json.loads(evaluated.read_text())["fgsm"]:
            row[f"fgsm_{attack['eps_255']:g}"] = attack["acc1"]
    return row


def fmt(values: list, digits: int) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def parts_of(study: Path, names=None) -> list:
    """The study's data sets (its subfolders of arms), or those named."""
    return [p for p in sorted(study.iterdir()) if p.is_dir() and (names is None or p.name in names)]


def arms_table(study: Path, names=None) -> tuple:
    rows, wall = [], 0.0
    for part in parts_of(study, names):
        for arm in sorted(p for p in part.iterdir() if p.is_dir()):
            runs = [r for r in (read_run(s) for s in sorted(arm.glob("s*")) if (s / "summary.json").is_file()) if r]
            if not runs:
                continue
            wall += sum(r["wall_time_s"] for r in runs)
            cells = {"set": part.name, "arm": arm.name, "seeds": len(runs)}
            for label, key in COLUMNS[1:]:
                digits = 4 if "ECE" in label or "NLL" in label else 2
                cells[label] = fmt([r[key] for r in runs if key in r], digits)
            rows.append(cells)
    return rows, wall


def pooled(arm_dir: Path) -> dict:
    """seed -> (logits, labels) of the arm's completed runs."""
    out = {}
    for run in sorted(arm_dir.glob("s*")):
        saved = load_logits(run / "val_logits.pt") if read_run(run) else None
        if saved is not None:
            out[run.name] = (saved.logits, saved.labels)
    return out


def evaluated(arm_dir: Path, eps_255: float = 2.0) -> dict:
    """seed -> (temperature-scaled logits of the report half, its labels, FGSM predictions at ``eps_255``, labels)
    from the runs' `mixtrain eval` whose logits file keeps FGSM's per-image predictions."""
    out = {}
    for run in sorted(arm_dir.glob("s*")):
        saved, report_path = load_logits(run / "eval" / "val_logits.pt"), run / "eval" / "eval.json"
        if saved is None or eps_255 not in saved.fgsm or not report_path.is_file() or not read_run(run):
            continue
        report = json.loads(report_path.read_text())
        _, shown = heldout_indices(len(saved.labels), float(report["eval_config"]["heldout"]),
                                   report["eval_config"]["seed"])
        scaled = saved.logits[shown].double() / report["temperature"]["value"]
        out[run.name] = (scaled, saved.labels[shown], saved.fgsm[eps_255], saved.labels)
    return out


def interval(d: float, lo: float, hi: float, digits: int) -> str:
    return f"{d:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def claims_table(study: Path, names=None, claims=CLAIMS) -> list:
    rows = []
    for part in parts_of(study, names):
        for label, arm, base in claims:
            a, b = pooled(part / arm), pooled(part / base)
            seeds = sorted(set(a) & set(b))
            if not seeds:
                continue
            labels = torch.cat([a[s][1] for s in seeds])
            assert torch.equal(labels, torch.cat([b[s][1] for s in seeds]))
            diffs = paired_differences(torch.cat([a[s][0] for s in seeds]), torch.cat([b[s][0] for s in seeds]), labels)
            row = {"set": part.name, "comparison": label, "seeds": len(seeds), "images": len(labels)}
            for metric, digits in (("acc1", 2), ("nll", 4), ("ece", 4)):
                row[f"{metric} difference [95%]"] = interval(*diffs[metric], digits)
            ea, eb = evaluated(part / arm), evaluated(part / base)
            if set(seeds) <= set(ea) & set(eb):  # the same seeds as the columns before, or none at all
                (scaled_a, shown, attacked_a, labels), (scaled_b, shown_b, attacked_b, labels_b) = (
                    [torch.cat([runs[s][i] for s in seeds]) for i in range(4)] for runs in (ea, eb))
                assert torch.equal(shown, shown_b) and torch.equal(labels, labels_b)
                row["ECE after T difference [95%]"] = interval(*paired_differences(scaled_a, scaled_b, shown)["ece"], 4)
                row["FGSM 2/255 difference [95%]"] = interval(*paired_accuracy(attacked_a, attacked_b, labels), 2)
            else:
                row["ECE after T difference [95%]"] = row["FGSM 2/255 difference [95%]"] = "-"
            rows.append(row)
    return rows


def claim(spec: str) -> tuple:
    """``ARM:BASELINE:LABEL`` as a row of :data:`CLAIMS`: ``(label, arm, baseline)``."""
    arm, base, label = spec.split(":", 2)
    return label, arm, base


def markdown(rows: list) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--parts", default=None, help="the data sets (subfolders) to tabulate, comma-separated")
    parser.add_argument("--claims", nargs="*", default=None, metavar="ARM:BASELINE:LABEL",
                        help="the paired comparisons (default: the evidence study's)")
    args = parser.parse_args(argv)
    if not args.study.is_dir():
        print(f"error: no study at {args.study}: run scripts/evidence_study.sh first", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    names = args.parts.split(",") if args.parts else None
    claims = CLAIMS if args.claims is None else [claim(spec) for spec in args.claims]
    arms, wall = arms_table(args.study, names)
    claims = claims_table(args.study, names, claims)
    for name, rows in (("arms", arms), ("claims", claims)):
        with open(args.out / f"{name}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(markdown(rows), end="\n\n")
    print(f"training time of the completed runs: {wall / 60:.0f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
