"""Measure the test suite and write the figure into docs/index.md, with its date and command.

    python scripts/suite_figure.py              # runs `python -m pytest` whole: the count and the time
    python scripts/suite_figure.py --collect    # counts only (`python -m pytest --collect-only -q`)

The figure sits between ``<!-- measured: suite -->`` and ``<!-- end measured -->`` in docs/index.md;
``tests/test_docs.py`` holds it to :data:`FIGURE` (a count, a date, the command that measured it),
so it is never a number without its date and command. Run it on the machine the docs describe
(2 cores), in a clean clone.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "index.md"
BLOCK = re.compile(r"(<!-- measured: suite -->)(.*?)(<!-- end measured -->)", re.S)
# What this script writes: "667 tests, 9 min 41 s on 2 cores (2026-12-02, `python -m pytest`)" or,
# counted only, "667 tests (2026-12-02, `python -m pytest --collect-only -q`)".
FIGURE = re.compile(r"^(?P<count>\d+) tests(?:, (?P<time>\d+ min \d+ s) on (?P<cores>\d+) cores)? "
                    r"\((?P<date>\d{4}-\d{2}-\d{2}), `(?P<command>python -m pytest[^`]*)`\)$")


def count(output: str) -> int:
    """Tests run, from pytest's last line (``640 passed, 27 skipped in ...``), or collected (with the
    project's ``-q``, ``--collect-only -q`` prints ``tests/test_x.py: 12`` per file)."""
    per_file = re.findall(r"^\S+\.py: (\d+)$", output, re.M)
    if per_file:
        return sum(map(int, per_file))
    found = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)", output)}
    return sum(found.values())


def measure(collect: bool) -> str:
    command = ["python", "-m", "pytest", *(["--collect-only", "-q"] if collect else [])]
    start = time.monotonic()
    result = subprocess.run([sys.executable, *command[1:]], cwd=REPO, capture_output=True, text=True)
    seconds = time.monotonic() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed (exit {result.returncode}):\n{result.stdout[-2000:]}")
    n, date = count(result.stdout), time.strftime("%Y-%m-%d")
    if collect:
        return f"{n} tests ({date}, `{' '.join(command)}`)"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{n} tests, {int(seconds // 60)} min {int(seconds % 60)} s on {cores} cores ({date}, `{' '.join(command)}`)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collect", action="store_true", help="count the tests only, without running them")
    figure = measure(parser.parse_args().collect)
    text = PAGE.read_text()
    if not BLOCK.search(text):
        raise SystemExit(f"{PAGE} has no <!-- measured: suite --> ... <!-- end measured --> block")
    PAGE.write_text(BLOCK.sub(lambda m: m.group(1) + figure + m.group(3), text))
    print(figure)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
