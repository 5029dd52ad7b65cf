import inspect
import io
import os
import sys
import textwrap
import tokenize
from pathlib import Path

import pytest
import torch

# Let tests import helpers.py as a plain module.
sys.path.insert(0, str(Path(__file__).parent))

# Each test, and each process it starts, computes on one thread: tiny models gain nothing from more,
# and under pytest-xdist (-n 2 on 2 cores), or beside loader workers, OpenMP threads that spin on
# a busy core make a run several times slower (a shard run and its resume: 14 s on one thread, 60 s on two).
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models and batches: one thread is faster, above all when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _release_run_dirs():
    """Runs made in the test process lock their dirs for the life of the process: let go after each test."""
    yield
    from mixtrain.files import release_claims

    release_claims()


# --------------------------------------------------------------------------- the fast lane

# A call to one of these runs a whole mixtrain command: the CLI in this process (``main``) or in
# another (``run_cli``, ``start``, ``Popen``), a whole training run (``fit``), or any other program.
COMMANDS = frozenset({"main", "run_cli", "start", "fit", "Popen", "subprocess"})
TESTS = Path(__file__).resolve().parent
FOUND: dict = {}  # function -> whether it runs a command (each source is read once)


def called_names(func) -> set:
    """The names ``func``'s source calls (a name followed by ``(``), and ``subprocess`` if it is named:
    tokens, so a name in a string or a comment does not count."""
    try:
        source = textwrap.dedent(inspect.getsource(func))
    except (OSError, TypeError):
        return set()
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type in (tokenize.NAME, tokenize.OP)]
    names = {a.string for a, b in zip(tokens, tokens[1:]) if a.type == tokenize.NAME and b.string == "("}
    return names | ({"subprocess"} & {t.string for t in tokens})


def suite_helpers(func, names: set):
    """The functions of the test suite (tests/) that ``func`` calls by name: a test's own helpers."""
    scope = getattr(func, "__globals__", {})
    for name in names:
        target = scope.get(name)
        if inspect.isfunction(target) and TESTS in Path(inspect.getfile(target)).resolve().parents:
            yield target


def calls_a_command(func) -> bool:
    """Whether ``func`` calls one of :data:`COMMANDS`, itself or through the suite's helpers it calls."""
    if func not in FOUND:
        FOUND[func] = False  # while it is read: a helper that calls itself adds nothing
        names = called_names(func)
        FOUND[func] = bool(names & COMMANDS) or any(calls_a_command(h) for h in suite_helpers(func, names))
    return FOUND[func]


def runs_a_command(item) -> bool:
    """Whether the test, or any fixture it uses (the closure pytest resolved), runs a whole command."""
    if calls_a_command(getattr(item, "function", None)):
        return True
    defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    return any(calls_a_command(fixture.func) for name in item.fixturenames for fixture in defs.get(name, ()))


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config, items):
    """Mark ``e2e`` the tests that run a whole command: ``python -m pytest -m "not e2e"`` is the fast lane."""
    for item in items:
        if runs_a_command(item):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One finished 1-epoch run on a tiny 3-class folder, trained once for the whole test run (once per
    xdist worker) and shared by the tests that only read a run: ``root/run``, its data ``root/data``.
    Never write into it: copy it first (``shutil.copytree``)."""
    from helpers import make_image_folder, tiny_folder

    from mixtrain.cli import main

    root = tmp_path_factory.mktemp("tiny_run")
    make_image_folder(root / "data", per_class=8, val_per_class=4, size=16)
    assert main(["train", *tiny_folder(root / "data"), f"hydra.run.dir={root / 'run'}"]) == 0
    return root
