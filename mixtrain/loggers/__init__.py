"""Loggers: where a run's numbers go besides ``metrics.jsonl`` and the terminal, one registry entry
each (the ``logger`` group, which takes a list: ``logger=[tensorboard,mlflow]``, ``logger=[]``).

``tensorboard`` (the default), ``csv`` (``metrics.csv``), ``mlflow`` and ``wandb`` (each through its
own package, an extra: imported only when chosen), and ``custom``: a class of your own by
``_target_``. :mod:`mixtrain.loggers.base` holds the contract every logger keeps; the training run
calls them through one part (:class:`mixtrain.train.tracking.Loggers`), on rank 0 only.
"""

# Importing a logger's module registers it: tensorboard, csv_file (csv), mlflow_tracker (mlflow),
# wandb_tracker (wandb), custom.
from mixtrain.loggers.base import (FAILED, FINISHED, KILLED, Logger, LoggerKind, RunInfo, Sweep, create_loggers,
                                   flat_record, register_logger, scalars, sweep_of)
from mixtrain.loggers.csv_file import CsvConfig
from mixtrain.loggers.custom import CustomLoggerConfig
from mixtrain.loggers.mlflow_tracker import MlflowConfig
from mixtrain.loggers.tensorboard import TensorBoardConfig
from mixtrain.loggers.wandb_tracker import WandbConfig

__all__ = ["CsvConfig", "CustomLoggerConfig", "FAILED", "FINISHED", "KILLED", "Logger", "LoggerKind", "MlflowConfig",
           "RunInfo", "Sweep", "TensorBoardConfig", "WandbConfig", "create_loggers", "flat_record", "register_logger",
           "scalars", "sweep_of"]
