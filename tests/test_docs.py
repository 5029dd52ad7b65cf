"""The docs: the reference pages are generated from the code and committed current; every config
key has a doc line; the README stays a front door."""

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def gen_reference():
    spec = importlib.util.spec_from_file_location("gen_reference", REPO / "scripts" / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    assert 'pip install -e ".[dev]" && mixtrain train' in readme and "\npython -m pytest\n" in readme
    for link in ("docs/reference/config.md", "docs/index.md", "CHANGELOG.md"):
        assert f"({link})" in readme and (REPO / link).is_file()
