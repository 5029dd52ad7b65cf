"""Data is never code: what a file from someone else may name.

A checkpoint's config and a run dir's ``.hydra/`` are data. They may name registered options
(``resnet20``, ``imagefolder``, ``mixup``) and values, never code: an import path (a ``_target_``:
importing a module runs it) or a shell command (a ``pipe:`` URL, which WebDataset runs), unless
the user passes that key on this command line (the key itself, or ``trust=[KEY]``). Every command
that reads a stored config (eval, compare, predict, export, ``mixtrain.load_model``, train
``resume=``) asks :func:`check_stored` first; a run dir's overrides name a group's option by its
name, never by a path to a YAML file (:func:`check_option_names`) (issue 32).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Collection, Iterable, List, Mapping, Optional, Sequence, Tuple

from mixtrain.errors import MixtrainError

TARGET = "_target_"  # Hydra's import path
PIPE = "pipe:"  # WebDataset's shell-command URL; anywhere in a string (``a.tar::pipe:...``, ``{pipe:...,b}``)
# An option's name (``resnet20``, ``my/sub_option``): no path out of the config dirs (``..``, ``/abs``).
OPTION_NAME = re.compile(r"[\w-]+(\.[\w-]+)*(/[\w-]+(\.[\w-]+)*)*")


def code_values(tree: Any, prefix: str = "") -> List[Tuple[str, Any]]:
    """``(dotted key, value)`` of every value in a config tree that would run code: a ``_target_``
    (at any depth, or a dotted key ending in one) and every string holding ``pipe:``."""
    found: List[Tuple[str, Any]] = []
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            path = f"{prefix}{key}"
            if str(key).rsplit(".", 1)[-1] == TARGET:
                found.append((path, value))
            else:
                found.extend(code_values(value, f"{path}."))
    elif isinstance(tree, (list, tuple)):  # a list's items are its key's values
        for value in tree:
            found.extend(code_values(value, prefix))
    elif isinstance(tree, str) and PIPE in tree:
        found.append((prefix.rstrip("."), tree))
    return found


def passed(key: str, given: Collection[str]) -> bool:
    """Whether the command line passes ``key`` (or a node above it: ``trust=[dataset]``)."""
    return any(key == g or key.startswith(f"{g}.") for g in given)


def trust_fix(keys: Sequence[str]) -> str:
    return f"trust=[{','.join(keys)}]"


def check_stored(config: Any, source: Any, given: Collection[str] = (), commands: bool = True,
                 fix: Optional[Callable[[Sequence[str]], str]] = None) -> None:
    """Refuse a stored config (``source``: the file it came from) that names code the command line
    does not pass (``given``: the keys it passes).

    ``commands=False`` for a command that never opens the stored data (predict, export, the
    checkpoint's own copy of a resumed config): its ``pipe:`` URLs would never run, its import
    paths would (reading the config back imports them). ``fix`` says what to pass (default:
    ``trust=[KEYS]``).
    """
    found = [(key, value) for key, value in code_values(config)
             if not passed(key, given) and (commands or key.rsplit(".", 1)[-1] == TARGET)]
    if not found:
        return
    keys = list(dict.fromkeys(key for key, _ in found))
    shown = ", ".join(f"{key}={value!r}" for key, value in found[:3]) + (" ..." if len(found) > 3 else "")
    raise MixtrainError(f"{source} names code to run ({shown}): a checkpoint or run dir may name registered options, "
                        "never an import path (_target_) or a pipe: command, unless this command line passes it; "
                        f"if you trust the file, pass {(fix or trust_fix)(keys)}")


def check_option_names(choices: Iterable[Tuple[str, Any]], source: Any) -> None:
    """Refuse stored overrides of a config group (``key=value`` whose key has no ``.``) that are not
    options' names: a path (``dataset=../../x``) makes Hydra load a YAML file from anywhere, and
    a file can add Hydra callbacks, which Hydra runs as it starts. A top-level value (``seed=0``)
    is a plain name too."""
    for key, value in choices:
        values = value if isinstance(value, (list, tuple)) else [value]
        names = [str(key), *(str(v) for v in values if v is not None and not isinstance(v, (bool, int, float)))]
        bad = [n for n in names if not OPTION_NAME.fullmatch(n.replace("@", "/"))]
        if bad or isinstance(value, Mapping):
            raise MixtrainError(f"{source} names {key}={value!r}, which is not an option's name: a run dir may name "
                                "registered options, never a config file elsewhere; start a new run with the options "
                                "you mean")
