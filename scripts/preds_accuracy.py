"""Top-1 and ECE of a `mixtrain predict` output whose images sit in <class>/<file> folders.

    python scripts/preds_accuracy.py preds.jsonl     # written with topk = the number of classes

The label of each image is the name of its parent folder; the confidence is the top
probability as predict wrote it (temperature-scaled or not).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from mixtrain.evaluate.metrics import calibration_bins, ece_from_bins


def main(path: str) -> None:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    confidence = torch.tensor([r["probs"][0] for r in rows], dtype=torch.float64)
    correct = torch.tensor([r["classes"][0] == Path(r["path"]).parent.name for r in rows])
    ece = ece_from_bins(calibration_bins(confidence, correct))
    print(f"{path}: {len(rows)} images, top-1 {100 * correct.double().mean():.2f}%, ECE {ece:.4f}")


if __name__ == "__main__":
    main(sys.argv[1])
