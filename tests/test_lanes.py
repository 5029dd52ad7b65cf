"""The suite's two lanes (issue 37): the tests that run a whole command are marked ``e2e`` by what
they call, so ``python -m pytest -m "not e2e"`` is the fast lane; ``-n`` is the README's, not addopts'."""

from __future__ import annotations

import subprocess
import tomllib
from types import SimpleNamespace

from conftest import calls_a_command, runs_a_command
from helpers import REPO, TESTS

from mixtrain.cli import main


def trains():
    return main(["train"])


def reads_a_run(path):
    return (path / "summary.json").read_text()  # main(["eval"]) in a comment runs nothing


def says_the_command():
    return "run_cli('train') in a string runs nothing"


def builds_a_wheel():
    return subprocess.check_output(["true"])


def through_a_helper():
    return trains()  # a helper of the suite that runs the command


def through_a_library(path):
    return path.exists()  # a call that is not the suite's own


def test_a_call_to_a_command_is_found_by_its_tokens_not_by_its_text():
    assert calls_a_command(trains) and calls_a_command(builds_a_wheel)
    assert not calls_a_command(reads_a_run) and not calls_a_command(says_the_command)


def test_a_call_through_the_suites_own_helpers_is_followed():
    assert calls_a_command(through_a_helper) and not calls_a_command(through_a_library)


def item(function, **fixtures):
    """What pytest hands the hook: the test function, its fixture closure and their definitions."""
    defs = {name: (SimpleNamespace(func=func),) for name, func in fixtures.items()}
    return SimpleNamespace(function=function, fixturenames=list(fixtures),
                           _fixtureinfo=SimpleNamespace(name2fixturedefs=defs))


def test_a_test_is_e2e_when_it_or_any_fixture_of_its_closure_runs_a_command():
    assert runs_a_command(item(trains))
    assert runs_a_command(item(reads_a_run, run=reads_a_run, trained=trains))  # a fixture of a fixture
    assert not runs_a_command(item(reads_a_run, run=reads_a_run, text=says_the_command))


def test_the_shared_run_makes_its_readers_e2e(tiny_run, request):
    assert request.node.get_closest_marker("e2e") is not None
    assert (tiny_run / "run" / "last.pt").is_file() and (tiny_run / "data" / "train").is_dir()


def test_a_test_that_runs_nothing_is_in_the_fast_lane(request):
    assert request.node.get_closest_marker("e2e") is None


def test_workers_are_the_commands_choice_so_both_lanes_and_no_xdist_work():
    options = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "-n" not in options["addopts"].split() and any(m.startswith("e2e:") for m in options["markers"])
    readme, ci = (REPO / "README.md").read_text(), (REPO / ".ci" / "run").read_text()
    command = "python -m pytest -n 2"
    assert f"\n{command}\n" in readme and f"\n{command}\n" in ci
    assert 'python -m pytest -m "not e2e"' in (REPO / "docs" / "development.md").read_text()


def test_test_files_are_grouped_by_the_package_they_test():
    folders = sorted(p.name for p in TESTS.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    packages = {p.name for p in (REPO / "mixtrain").iterdir() if (p / "__init__.py").is_file()}
    assert folders and set(folders) <= packages, set(folders) - packages
    assert all(list(TESTS.glob(f"{folder}/test_*.py")) for folder in folders)
