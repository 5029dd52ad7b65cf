"""Measure the test suite and write the figure into the docs, with its date and command.

    python scripts/suite_figure.py              # `python -m pytest -n 2`, whole: count and time, docs/index.md
    python scripts/suite_figure.py --fast       # the fast lane, `-m "not e2e"`: docs/development.md
    python scripts/suite_figure.py --collect    # counts only (`python -m pytest --collect-only -q`)

The figure sits between ``<!-- measured: suite -->`` (``fast`` for the fast lane) and
``<!-- end measured -->``; ``tests/test_docs.py`` holds it to :data:`FIGURE` (a count, a date, the
command that measured it), so it is never a number without its date and command. Run it on the
machine the docs describe (2 cores), in a clean clone.
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
PAGES = {"suite": REPO / "docs" / "index.md", "fast": REPO / "docs" / "development.md"}


def block(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- measured: {name} -->)(.*?)(<!-- end measured -->)", re.S)


BLOCK = block("suite")
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


def measure(collect: bool, fast: bool) -> str:
    command = ["python", "-m", "pytest", *(["--collect-only", "-q"] if collect else ["-n", "2"]),
               *(["-m", '"not e2e"'] if fast else [])]
    start = time.monotonic()
    argv = [arg.strip('"') for arg in command[1:]]
    result = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True)
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
    parser.add_argument("--fast", action="store_true", help='the fast lane (-m "not e2e"), into docs/development.md')
    args = parser.parse_args()
    figure, name = measure(args.collect, args.fast), "fast" if args.fast else "suite"
    page, pattern = PAGES[name], block(name)
    text = page.read_text()
    if not pattern.search(text):
        raise SystemExit(f"{page} has no <!-- measured: {name} --> ... <!-- end measured --> block")
    page.write_text(pattern.sub(lambda m: m.group(1) + figure + m.group(3), text))
    print(figure)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
