"""Hydra's command line, read with public APIs only: its flags, and the jobs of a sweep.

``hydra.main`` reads ``sys.argv`` itself; mixtrain reads it first, to validate the config
(every job of a sweep) before Hydra starts, so a bad value stops everything with one line.
"""

from __future__ import annotations

import argparse
import os
import re
from collections import OrderedDict
from itertools import product
from pathlib import Path
from typing import List

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import ListConfig, OmegaConf

from mixtrain.errors import MixtrainError
from mixtrain.layout import HYDRA

INFO_CHOICES = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")


def hydra_args_parser() -> argparse.ArgumentParser:
    """The flags of a ``@hydra.main`` app's command line (Hydra 1.3's), and its overrides."""
    parser = argparse.ArgumentParser(add_help=False, prog="mixtrain")
    parser.add_argument("overrides", nargs="*")
    for flags in (("--help", "-h"), ("--hydra-help",), ("--resolve",), ("--run", "-r"), ("--multirun", "-m"),
                  ("--shell-completion", "-sc"), ("--version",)):
        parser.add_argument(*flags, action="store_true")
    parser.add_argument("--cfg", "-c", choices=["job", "hydra", "all"])
    for flags in (("--package", "-p"), ("--config-path", "-cp"), ("--config-name", "-cn"), ("--config-dir", "-cd"),
                  ("--experimental-rerun",)):
        parser.add_argument(*flags)
    parser.add_argument("--info", "-i", const="all", nargs="?", choices=INFO_CHOICES)
    return parser


def sweep_jobs(overrides: list) -> List[List[str]]:
    """The jobs of a sweep, each a list of ``key=value`` overrides, in the order (and so with the
    job numbers) of Hydra's basic sweeper: the cartesian product over keys in the order they
    first appear, a later override of a key replacing an earlier one.

    ``overrides`` are parsed Hydra ``Override`` objects whose sweeps are all discrete
    (choice, range, glob); a range/interval sweep is for a sweeper plugin.
    """
    choices: "OrderedDict[str, List[str]]" = OrderedDict()
    for override in overrides:
        key = override.get_key_element()
        if override.is_sweep_override():
            choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
    return [list(job) for job in product(*choices.values())]


def quote_value(value) -> str:
    """A value as a quoted Hydra override value (a path may hold spaces, '=', ',', quotes, brackets).

    Inside quotes Hydra's grammar keeps a backslash as it is, except a run of them that ends at a quote
    or at the string's end, which it reads as escapes: that run is doubled, and a quote escaped."""
    text = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, str(value))
    return "'" + text.replace("'", "\\'") + "'"


def override_key(override: str) -> str:
    """The key an override sets: ``+optim.lr=0.1`` -> ``optim.lr``."""
    return override.split("=", 1)[0].lstrip("+~")


def saved_overrides(run_dir: Path) -> List[str]:
    """The overrides Hydra saved for a run (``.hydra/overrides.yaml``); [] where there are none; one
    line for a file that is not a list of overrides Hydra parses (damaged: cut short, edited, ...)."""
    path = Path(run_dir) / HYDRA / "overrides.yaml"
    if not os.path.lexists(path):
        return []
    try:
        saved = OmegaConf.load(path)  # Hydra writes a list, [] for none
        if not isinstance(saved, ListConfig):
            raise ValueError("not a list")
        overrides = [str(o) for o in saved]
        OverridesParser.create().parse_overrides(overrides)
    except Exception as ex:  # YAML, OmegaConf and Hydra's parse errors, a folder in its place, bad UTF-8
        first = (str(ex).strip().splitlines() or [type(ex).__name__])[0][:160]
        raise MixtrainError(f"{path} is damaged ({first}): it lists the run's overrides as Hydra saved them; "
                            "restore it, or start a new run") from None
    return overrides
