"""``logger=wandb``: each run a Weights & Biases run, through the ``wandb`` package (``pip install "mixtrain[wandb]"``).

The resolved config (W&B shows its keys dotted: ``optim.lr``), the overrides as the run's notes,
every number of ``metrics.jsonl`` (charted against ``epoch``) and the step metrics (against
``global_step``), all at the optimizer step as W&B's own step; the run's files at the end
(an artifact: ``run-<id>-files``), and its end: exit code 0 when it completed, 1 otherwise (a stop by a signal is also
marked preempting: it can be resumed), with ``mixtrain/status`` in the summary.

With no API key configured (``WANDB_API_KEY``, or ``wandb login``'s ``~/.netrc``) the run is
offline: it is written to the run dir's ``wandb/`` and needs no network; ``wandb sync`` uploads it
later. A sweep's jobs share a W&B ``group`` (the sweep dir). A resumed run continues its W&B run
(its id is in the checkpoint, with ``resume="allow"``); W&B keeps each run's steps increasing, so a
step it already has is not logged again.
"""

from __future__ import annotations

import netrc
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional
from urllib.parse import urlparse

from mixtrain import layout
from mixtrain.config.errors import choice
from mixtrain.loggers.base import FINISHED, KILLED, Logger, RunInfo, finite, register_logger, scalars

@dataclass
class WandbConfig:
    """Weights & Biases (pip install "mixtrain[wandb]"): params, metrics and files; offline without an API key."""

    name: str = "wandb"  # the kind of logger (a node of the logger group is read by it)
    project: str = "mixtrain"  # the W&B project
    entity: Optional[str] = None  # the user or team; null: your default entity
    group: Optional[str] = None  # the W&B group; null: a sweep's jobs are grouped by their sweep dir, a single run has none
    tags: List[str] = field(default_factory=list)  # the run's W&B tags
    # online | offline | disabled; null: WANDB_MODE if set, else online when an API key is configured
    # (WANDB_API_KEY or `wandb login`), else offline: nothing needs the network (`wandb sync` uploads later)
    mode: Optional[str] = None
    run_name: Optional[str] = None  # the run's name in W&B; null: the run dir's name

    def __post_init__(self) -> None:
        if self.mode is not None:
            choice(self.mode, ("online", "offline", "disabled"), "logger.wandb.mode")


def api_key_configured() -> bool:
    """Whether W&B would find an API key: ``WANDB_API_KEY``, or the login ``wandb login`` saved in
    ``~/.netrc`` (``$NETRC``) for the W&B host (``WANDB_BASE_URL``)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):  # no ~/.netrc, or one W&B could not read either
        return False


class WandbLogger(Logger):
    def __init__(self, cfg: WandbConfig) -> None:
        self.cfg, self.wb, self.id, self.group, self.mode = cfg, None, None, None, None
        self.epoch_keys: set = set()

    def start(self, run: RunInfo, state: Dict[str, Any]) -> None:
        # wandb (0.5 s to import, and its wandb-core service): only when this logger is chosen
        import wandb

        self.mode = self.cfg.mode or os.environ.get("WANDB_MODE") or ("online" if api_key_configured() else "offline")
        self.group = self.cfg.group or state.get("group") or (str(run.sweep.dir) if run.sweep else None)
        self.wb = wandb.init(project=self.cfg.project, entity=self.cfg.entity, group=self.group,
                             tags=list(self.cfg.tags) or None, name=self.cfg.run_name or run.name,
                             notes=" ".join(run.overrides) or None, config=run.config, id=state.get("id"),
                             resume="allow" if state.get("id") else None, dir=str(run.run_dir), mode=self.mode)
        self.id = self.wb.id
        self.wb.define_metric("global_step")
        self.wb.define_metric("train/*", step_metric="global_step")
        self.wb.define_metric("epoch")

    def log_step(self, metrics: Dict[str, float], step: int) -> None:
        if step >= self.wb.step:
            self.wb.log({**metrics, "global_step": step}, step=step)

    def log_epoch(self, record: Dict[str, Any], step: int) -> None:
        values = scalars(record)
        for key in values.keys() - self.epoch_keys - {"epoch"}:
            self.wb.define_metric(key, step_metric="epoch")
        self.epoch_keys.update(values)
        if step >= self.wb.step:
            self.wb.log(values, step=step)

    def finish(self, status: str, summary: Dict[str, Any], artifacts: List[Path]) -> None:
        self.wb.summary.update({k: summary[k] for k in layout.OBJECTIVES if finite(summary.get(k))})
        self.wb.summary["mixtrain/status"] = status
        if artifacts:
            import wandb  # imported in start

            files = wandb.Artifact(f"run-{self.id}-files", type="mixtrain-run")
            for path in artifacts:
                files.add_file(str(path))
            self.wb.log_artifact(files)
        if status == KILLED:
            self.wb.mark_preempting()
        self.wb.finish(exit_code=0 if status == FINISHED else 1)

    def state_dict(self) -> Dict[str, Any]:
        return {"id": self.id, "group": self.group}

    def where(self) -> Dict[str, Any]:
        offline = Path(self.wb.dir).parent if self.wb is not None and self.mode == "offline" else None
        url = self.wb.url if self.wb is not None and self.mode == "online" else None
        return {"kind": "wandb", "id": self.id, "project": self.cfg.project, "group": self.group, "mode": self.mode,
                "url": url, "offline_dir": str(offline) if offline else None,
                "open": url or (f"wandb sync {offline}" if offline else f"W&B mode {self.mode}")}


def report_lines(wheres: List[Dict[str, Any]], files: List[Path]) -> List[str]:
    """For ``mixtrain report``: one ``wandb sync`` line for the offline runs, the online runs' URLs."""
    lines = []
    offline = sorted({w["offline_dir"] for w in wheres if w.get("offline_dir")})
    if offline:
        lines.append(f"W&B: {len(offline)} offline run(s); upload them with: wandb sync {' '.join(offline)}")
    for url in sorted({w["url"] for w in wheres if w.get("url")}):
        lines.append(f"W&B: {url}")
    return lines


register_logger("wandb", WandbConfig, lambda cfg, key: WandbLogger(cfg), package="wandb", extra="wandb",
                report=report_lines)
