"""How long a stop takes when a step is slow: seconds from SIGTERM to the end of the process.

    python scripts/stop_bound.py --step 5 20

Trains a model whose every training step sleeps ``--step`` seconds (tiny data made here, CPU),
sends SIGTERM as a step begins and again half-way through one, and prints the seconds until the
process has exited, with the line it said. The stop waits for the step in progress, writes
``last.pt`` and exits; SLURM sends SIGKILL 30 s after its SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers import TINY, make_image_folder, slow_step_args, wait_for_step  # noqa: E402


def stop_after(step: float, wait: float, data: Path, folder: Path):
    """Start a run, SIGTERM it ``wait`` seconds into a step; ``(seconds to exit, exit code, last line)``."""
    folder.mkdir()
    mark = folder / "step"
    args = ["dataset=imagefolder", f"dataset.root={data}", "dataset.image_size=16", *TINY,
            *slow_step_args(folder, step, mark), "trainer.batch_size=2", "trainer.log_every=50",
            f"hydra.run.dir={folder / 'run'}"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "mixtrain", "train", *args], cwd=folder, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_step(mark, proc)
    time.sleep(wait)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    return time.monotonic() - sent, proc.returncode, err.strip().splitlines()[-1] if err.strip() else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step", type=float, nargs="+", default=[5.0, 20.0], help="seconds a step takes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = make_image_folder(Path(tmp) / "data", per_class=8, val_per_class=3, size=16)
        for step in args.step:
            for where, wait in (("as a step begins", 0.0), ("half-way through a step", step / 2)):
                took, code, line = stop_after(step, wait, data, Path(tmp) / f"{step}-{wait}")
                print(f"step {step:g} s, SIGTERM {where}: exit {code} {took:.2f} s later | {line[:100]}", flush=True)


if __name__ == "__main__":
    main()
