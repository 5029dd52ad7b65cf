"""The docs: the reference pages and every list of options in the other pages are generated from
the code and committed current, or checked against it; every config key has a doc line; error
examples are the code's errors; measured figures carry their date and command; the README stays a
front door."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gen_reference():
    return load_script("gen_reference")


@pytest.fixture(autouse=True)
def mixtrains_own_registry():
    """The registries as mixtrain ships them: a test elsewhere in this process may have registered a
    user's own method (tests/test_extension.py), which no committed page lists."""
    from mixtrain.config.registry import REGISTRY
    from mixtrain.options import register_configs

    register_configs()
    saved = {group: dict(entries) for group, entries in REGISTRY.items()}
    for entries in REGISTRY.values():
        for name in [n for n, e in entries.items() if not e.schema.__module__.startswith("mixtrain.")]:
            del entries[name]
    yield
    for group, entries in saved.items():
        REGISTRY[group].clear()
        REGISTRY[group].update(entries)


def test_the_committed_reference_pages_are_what_the_code_generates(capsys):
    assert gen_reference().write(check=True) == 0, capsys.readouterr().err  # python scripts/gen_reference.py


def test_every_config_key_has_a_doc_line_and_the_pages_name_every_option():
    from mixtrain.config.registry import GROUPS, options

    pages, missing = gen_reference().pages()
    assert missing == []
    for group in GROUPS:
        for entry in options(group).values():
            for name in entry.names or (entry.name,):
                assert f"`{group}={name}`" in pages["methods.md" if group == "augment" else "config.md"]
    assert "| `trainer.amp_dtype` | `str` | `\"fp16\"` | fp16, bf16 |" in pages["config.md"]  # allowed, from choice()


def test_a_key_without_a_doc_line_is_named(tmp_path, monkeypatch):
    (tmp_path / "undocumented_schema.py").write_text(
        "from dataclasses import dataclass\n\n\n@dataclass\nclass Blend:\n"
        "    name: str = 'blend'\n    alpha: float = 1.0  # Beta(alpha, alpha)\n    width: int = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from undocumented_schema import Blend

    missing = []
    table = gen_reference().key_table(Blend, "augment.", missing, option="blend")
    assert missing == ["undocumented_schema.Blend.width"]
    assert "| `augment.alpha` | `float` | `1.0` |  | Beta(alpha, alpha) |" in table
    sys.modules.pop("undocumented_schema")


def test_the_readme_is_a_front_door_with_the_two_commands():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert 'pip install -e ".[dev]" && mixtrain train' in readme and "\npython -m pytest -n 2\n" in readme
    for link in ("docs/reference/config.md", "docs/index.md", "CHANGELOG.md"):
        assert f"({link})" in readme and (REPO / link).is_file()


def test_a_registry_entry_missing_from_any_page_that_lists_its_group_fails(tmp_path, monkeypatch, capsys):
    # A throwaway dataset source, registered here: every page that lists the dataset options is then
    # stale (the generated blocks, the configuration reference). A throwaway mixing method leaves every
    # committed page current (none lists the methods: a method is its module, its YAML and its test,
    # issue 37; the docs build writes their page), and a list of them typed by hand fails.
    from dataclasses import dataclass

    from hydra.core.config_store import ConfigStore

    from mixtrain.config.augment import MixConfig
    from mixtrain.config.dataset import DatasetConfig
    from mixtrain.config.registry import REGISTRY, option_names
    from mixtrain.data import register_source
    from mixtrain.mixing import Mixer, register_method

    module = gen_reference()
    hand = tmp_path / "hand.md"
    hand.write_text("Methods: " + ", ".join(f"`{n}`" for n in option_names("augment")) + ".\n")
    monkeypatch.setattr(module, "doc_files", lambda real=module.doc_files: [*real(), hand])
    assert module.write(check=True) == 0, capsys.readouterr().err

    @dataclass
    class ThrowawayConfig(MixConfig):
        """A throwaway method of this test."""

        name: str = "throwaway"

    @dataclass
    class ThrowawayData(DatasetConfig):
        """A throwaway source of this test."""

        name: str = "throwaway_data"

    register_method("throwaway", ThrowawayConfig, Mixer)
    try:
        assert module.write(check=True) == 1
        err = capsys.readouterr().err
        assert "stale:" not in err  # no committed page lists the methods
        assert f"{hand.name}: a list of augment options misses throwaway" in err
        register_source("throwaway_data", ThrowawayData, open=lambda *a: None)
        assert module.write(check=True) == 1
    finally:
        REGISTRY["augment"].pop("throwaway", None)
        REGISTRY["dataset"].pop("throwaway_data", None)
        for group, name in (("augment", "throwaway"), ("dataset", "throwaway_data")):
            ConfigStore.instance().repo["schema"][group].pop(f"{name}.yaml", None)
    err = capsys.readouterr().err
    stale = re.search(r"stale: (.*): run python scripts/gen_reference.py", err).group(1).split(", ")
    assert sorted(stale) == ["README.md", "docs/guides/configs.md", "docs/reference/config.md"]
    assert module.write(check=True) == 0  # gone again: the pages are current


def test_error_examples_in_the_docs_are_the_errors_the_code_gives():
    # `unknown model 'resnet21': choose one of ...` (the bad-input table's row 3), wherever a page quotes one.
    from mixtrain.errors import MixtrainError
    from mixtrain.options import compose

    quoted = [(path, m) for path in gen_reference().doc_files()
              for m in re.finditer(r"`(unknown (\w+) '([\w-]+)': choose one of [^`]+)`", path.read_text())]
    assert quoted
    for path, match in quoted:
        with pytest.raises(MixtrainError) as raised:
            compose("train", [f"{match.group(2)}={match.group(3)}"])
        assert str(raised.value) == match.group(1), path


def test_the_test_suites_figures_carry_their_date_and_command():
    figure = load_script("suite_figure")
    for name, page in figure.PAGES.items():
        block = figure.block(name).search(page.read_text())
        assert block, f"{page}: no <!-- measured: {name} --> block (python scripts/suite_figure.py)"
        measured = figure.FIGURE.match(block.group(2))
        assert measured, f"{page}: {block.group(2)!r} is not what scripts/suite_figure.py writes"
        assert int(measured["count"]) > 0 and measured["command"].startswith("python -m pytest")
        assert ('-m "not e2e"' in measured["command"]) == (name == "fast")
    assert figure.count("tests/test_a.py: 3\ntests/test_b.py: 4\n") == 7
    assert figure.count("640 passed, 27 skipped, 3 warnings in 581.20s (0:09:41)") == 667
