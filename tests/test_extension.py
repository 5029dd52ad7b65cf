"""Open for extension: a mixing method, a model and a dataset of a user's own are each a module and a
YAML file in their own config dir, found through Hydra's search path, with no edit to mixtrain.

The method below is a throwaway (Mixup with a fixed weight): it trains, is listed by ``--help``,
previews, is labelled in eval and report, and resumes, all from its registry entry."""

import json
import textwrap

import pytest
from helpers import TINY, make_image_folder

from mixtrain.cli import main
from mixtrain.config import options

METHOD = '''
from dataclasses import dataclass

import torch

from mixtrain.config.augment import MixConfig
from mixtrain.config.errors import probability
from mixtrain.mixing import Mixer, register_method


@dataclass
class BlendConfig(MixConfig):
    """Blend: every sample with a random partner, at a fixed weight."""

    name: str = "blend"
    weight: float = 0.7

    def __post_init__(self):
        super().__post_init__()
        probability(self.weight, "augment.weight")


class BlendMixer(Mixer):
    def __call__(self, images, labels, epoch):
        targets = self.targets(labels)
        if not self.active(epoch):
            return images, targets
        partner = torch.from_numpy(self.rng.permutation(len(images))).to(images.device)
        w = self.cfg.weight
        return w * images + (1 - w) * images[partner], w * targets + (1 - w) * targets[partner]


register_method("blend", BlendConfig, BlendMixer, label=lambda cfg: f"blend w={cfg.weight:g}")
'''

MODEL = '''
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes, width=8):
        super().__init__()
        self.stages = nn.ModuleList([nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())])
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x):
        for stage in self.stages:
            x = stage(x)
        return self.head(x)
'''

DATASET = '''
import numpy as np


class Stripes:
    """Horizontal (class 0) or vertical (class 1) stripes, 16 px."""

    classes = ["horizontal", "vertical"]

    def __init__(self, split, count=24):
        self.count = count if split == "train" else count // 2

    def __len__(self):
        return self.count

    def __getitem__(self, i):
        label = i % 2
        image = np.zeros((16, 16, 3), dtype=np.uint8)
        if label:
            image[:, ::2] = 255
        else:
            image[::2] = 255
        return image, label
'''

CONFIGS = {
    "augment/blend.yaml": "# A method of the user's own: its module registers it.\n_target_: blend_method.BlendConfig\n"
                          "weight: 0.6\n",
    "model/tiny_net.yaml": "defaults:\n  - /schema/model/custom@_here_\n  - _self_\nname: tiny_net\n"
                           "_target_: user_models.TinyNet\nkwargs:\n  width: 4\n",
    "dataset/stripes.yaml": "defaults:\n  - /schema/dataset/custom@_here_\n  - _self_\nname: stripes\n"
                            "_target_: user_data.Stripes\nimage_size: 16\n",
}


@pytest.fixture
def user(tmp_path, monkeypatch):
    """The user's own modules on the Python path, and their config dir."""
    for name, text in {"blend_method.py": METHOD, "user_models.py": MODEL, "user_data.py": DATASET}.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    for name, text in CONFIGS.items():
        (tmp_path / "conf" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "conf" / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    make_image_folder(tmp_path / "data", per_class=8, val_per_class=4, size=16)
    return tmp_path


def folder(root):
    return ["dataset=imagefolder", f"dataset.root={root / 'data'}", "dataset.cache=true", "dataset.image_size=16",
            *TINY, "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"]


def test_a_users_mixing_method_trains_previews_and_reports_from_its_own_files(user, capsys):
    cd = ["-cd", str(user / "conf")]
    run = user / "run"
    assert main(["train", *cd, "augment=blend", *folder(user), f"hydra.run.dir={run}"]) == 0
    saved = json.loads((run / "summary.json").read_text())["config"]["augment"]
    assert saved == {"_target_": "blend_method.BlendConfig", "name": "blend", "label_smoothing": 0.0,
                     "disable_epochs": 0, "loss": "soft_ce", "bce_target_threshold": None, "mode": "batch",
                     "prob": 1.0, "symmetric_lam": False, "weight": 0.6}
    assert "blend" in options("augment")

    assert main(["train", *cd, "--help"]) == 0  # listed beside mixtrain's own options
    listed = capsys.readouterr().out
    assert "augment: blend, cutmix" in listed

    assert main(["preview", *cd, "augment=blend", *folder(user), f"hydra.run.dir={user / 'p'}"]) == 0
    assert (user / "p" / "preview.png").stat().st_size > 1000

    # A checkpoint's import paths are imported only when the command line trusts them (issue 32).
    assert main(["eval", f"checkpoint={run}", "fgsm_eps=[]", "bootstrap=0", f"hydra.run.dir={user / 'ev'}"]) == 2
    assert "names code to run (augment._target_='blend_method.BlendConfig')" in capsys.readouterr().err
    assert main(["eval", f"checkpoint={run}", "fgsm_eps=[]", "bootstrap=0", "trust=[augment._target_]",
                 f"hydra.run.dir={user / 'ev'}"]) == 0
    assert json.loads((user / "ev" / "eval.json").read_text())["run"]["label"] == "blend w=0.6"
    assert main(["report", str(run), "--out", str(user / "rep")]) == 0
    assert "1 runs (1 completed)" in capsys.readouterr().out
    assert main(["train", f"resume={run}", "trainer.epochs=2"]) == 2  # its config dir is the user's to pass again
    assert f"pass -cd {user / 'conf'} to continue it" in capsys.readouterr().err
    assert main(["train", *cd, f"resume={run}", "trainer.epochs=2"]) == 0

    capsys.readouterr()
    assert main(["train", *cd, "augment=blend", "augment.weight=1.5", *folder(user),
                 f"hydra.run.dir={user / 'bad'}"]) == 2
    assert "augment.weight must be a probability in [0, 1] (got 1.5)" in capsys.readouterr().err


def test_a_users_model_and_dataset_by_target_train(user):
    run = user / "run"
    assert main(["train", "-cd", str(user / "conf"), "model=tiny_net", "dataset=stripes", *TINY, "trainer.epochs=2",
                 "augment=manifold", "augment.layers=[0,1]", f"hydra.run.dir={run}"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["config"]["model"] == {"name": "tiny_net", "_target_": "user_models.TinyNet", "kwargs": {"width": 4},
                                          "pretrained_path": None, "strict": True, "freeze": None,
                                          "freeze_epochs": None, "grad_checkpointing": False}
    assert summary["num_classes"] == 2 and summary["status"] == "completed"
    assert main(["eval", f"checkpoint={run}", "fgsm_eps=[]", "bootstrap=0", "trust=[model._target_,dataset._target_]",
                 f"hydra.run.dir={user / 'ev'}"]) == 0
    assert json.loads((user / "ev" / "eval.json").read_text())["dataset"]["samples"] == 12


@pytest.mark.parametrize("group, example", [("model", "my_pkg.nets.MyNet"), ("dataset", "my_pkg.data.Flowers")])
def test_a_target_that_cannot_be_imported_is_one_line(group, example, tmp_path, capsys):
    assert main(["train", f"{group}=custom", f"{group}._target_=nope.Thing", f"hydra.run.dir={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mixtrain: error: {group}._target_='nope.Thing' cannot be imported") and err.count("\n") == 1
    assert err.rstrip().endswith(f"name a class on the Python path, e.g. {example}")
