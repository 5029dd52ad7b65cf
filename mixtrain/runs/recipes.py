"""``mixtrain recipes``: the named experiments in ``recipes/``, read from their headers.

A recipe is ``# @package _global_``, header comments (a description, then ``# source:``,
``# expected:`` and ``# hardware:`` lines), then a ``defaults:`` list of ``override
/group: option`` lines and value deltas. The table shows the header next to what the
recipe composes to (dataset, model, augment, epochs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from mixtrain.config import recipes_dir, to_object
from mixtrain.errors import MixtrainError
from mixtrain.mixing import describe_augment
from mixtrain.options import compose, register_configs

HEADER_KEYS = ("source", "expected", "hardware")


@dataclass
class Recipe:
    name: str
    path: Path
    description: str
    source: str
    expected: str
    hardware: str


def read_header(path: Path) -> Dict[str, str]:
    """The leading comment block: ``{"description": ..., "source": ..., "expected": ..., "hardware": ...}``."""
    header: Dict[str, str] = {key: "" for key in ("description", *HEADER_KEYS)}
    description: List[str] = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        key, _, value = text.partition(":")
        if text.startswith("@package"):
            continue
        if key in HEADER_KEYS and value:
            header[key] = value.strip()
        elif not any(header[k] for k in HEADER_KEYS):  # the description comes before the keyed lines
            description.append(text)
    header["description"] = " ".join(description)
    return header


def list_recipes() -> List[Recipe]:
    return [Recipe(path.stem, path, **read_header(path)) for path in sorted(recipes_dir().glob("*.yaml"))]


def composed_summary(name: str) -> Dict[str, str]:
    """Dataset, model, augment and epochs of ``recipe=name`` as Hydra composes it."""
    cfg = compose("train", [f"recipe={name}"])
    dataset = cfg.dataset.name
    if dataset == "imagefolder":
        root = OmegaConf.select(cfg, "dataset.root", throw_on_missing=False, default=None)
        try:
            dataset += f" ({Path(str(root)).name})" if root not in (None, "???") else " (dataset.root=...)"
        except Exception:  # an interpolation that does not resolve here
            dataset += " (dataset.root=...)"
    model = cfg.model.name + (" (timm)" if "pretrained" in cfg.model else "")
    augment = describe_augment(to_object(cfg.augment))
    return {"dataset": dataset, "model": model, "augment": augment, "epochs": str(cfg.trainer.epochs)}


def recipes_table(recipes: Sequence[Recipe]):

    table = Table(title="mixtrain train recipe=NAME (command-line overrides win over the recipe)",
                  title_justify="left", show_lines=True)
    for header, style in (("name", "bold"), ("dataset", ""), ("model", ""), ("augment", ""), ("epochs", ""),
                          ("expected", ""), ("source", "dim")):
        table.add_column(header, style=style or None, overflow="fold", no_wrap=header in ("name", "epochs"),
                         justify="right" if header == "epochs" else "left")
    for recipe in recipes:
        composed = composed_summary(recipe.name)
        table.add_row(recipe.name, composed["dataset"], composed["model"], composed["augment"], composed["epochs"],
                      recipe.expected, recipe.source)
    return table


def main(args: Sequence[str]) -> int:

    if any(a in ("-h", "--help") for a in args):
        print("usage: mixtrain recipes\n\nThe recipes in recipes/, with their source, expected result and hardware;\n"
              "run one with `mixtrain train recipe=NAME [overrides]`.")
        return 0
    if args:
        raise MixtrainError(f"mixtrain recipes takes no arguments (got {' '.join(args)}): run `mixtrain recipes`")
    register_configs()
    console = Console(width=None if Console().is_terminal else 200)
    recipes = list_recipes()
    console.print(recipes_table(recipes))
    console.print(f"hardware, time and settings: the header of {recipes_dir()}/<name>.yaml", highlight=False)
    return 0
