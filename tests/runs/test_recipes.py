"""Recipes: every one composes, holds the published settings, and trains a few steps on
tiny data; `mixtrain recipes`; what the recipes needed (LAMB, eval size, RandAugment)."""

import hashlib
import pickle

import numpy as np
import pytest
import torch
from helpers import TINY, class_image, make_cifar10_folder, make_config, make_image_folder
from omegaconf import DictConfig, OmegaConf

from mixtrain.cli import main
from mixtrain.config import recipes_dir
from mixtrain.config.registry import REGISTRY as SCHEMAS
from mixtrain.data import build_data
from mixtrain.runs.recipes import list_recipes, read_header
from mixtrain.train.training import fit

RECIPES = sorted(path.stem for path in recipes_dir().glob("*.yaml"))
# Recipes on the bundled set (the default dataset) take no dataset.root.
BUNDLED = sorted(name for name in RECIPES if "override /dataset" not in (recipes_dir() / f"{name}.yaml").read_text())


def make_cifar100_folder(root, monkeypatch, n_train=40, n_test=16, seed=0):
    """torchvision's CIFAR-100 on-disk format with tiny splits; its checksums are patched to match."""
    from torchvision.datasets import CIFAR100

    rng = np.random.default_rng(seed)
    base = root / CIFAR100.base_folder
    base.mkdir(parents=True, exist_ok=True)

    def write(name, n):
        labels = [int(x) for x in rng.integers(0, 4, size=n)]
        data = np.stack([class_image(y, 32, rng).transpose(2, 0, 1).reshape(-1) for y in labels])
        with open(base / name, "wb") as f:
            pickle.dump({"data": data, "fine_labels": labels}, f)
        return [name, hashlib.md5((base / name).read_bytes()).hexdigest()]

    train_list, test_list = [write("train", n_train)], [write("test", n_test)]
    with open(base / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class{i:02d}" for i in range(100)]}, f)
    meta = dict(CIFAR100.meta, md5=hashlib.md5((base / "meta").read_bytes()).hexdigest())
    monkeypatch.setattr(CIFAR100, "train_list", train_list)
    monkeypatch.setattr(CIFAR100, "test_list", test_list)
    monkeypatch.setattr(CIFAR100, "meta", meta)
    return root


def test_every_recipe_is_overrides_only_with_a_cited_header():
    assert len(RECIPES) >= 9
    for path in sorted(recipes_dir().glob("*.yaml")):
        text = path.read_text()
        assert text.splitlines()[0] == "# @package _global_", path.name
        header = read_header(path)
        for key in ("description", "source", "expected", "hardware"):
            assert header[key], f"{path.name}: no {key}"
        assert "PLACEHOLDER" not in text
        body = OmegaConf.load(path)
        for entry in body.defaults:  # only `override /group: option`, no new groups or files
            assert isinstance(entry, DictConfig) and len(entry) == 1, path.name
            (key,) = entry.keys()
            assert key.startswith("override /") and key.split("/", 1)[1] in SCHEMAS, (path.name, key)
        assert set(body) - {"defaults"} <= {*SCHEMAS, "trainer", "seed"}, path.name


# Published settings, checked on the composed config (a regression test of each recipe).
PUBLISHED = {
    "preact_resnet18_cifar10_erm": {"dataset.name": "cifar10", "model.name": "preact_resnet18", "augment.name": "none",
                                    "optim.lr": 0.1, "optim.momentum": 0.9, "optim.weight_decay": 1e-4,
                                    "sched.decay_milestones": [100, 150], "sched.decay_rate": 0.1, "trainer.epochs": 200,
                                    "trainer.batch_size": 128},
    "preact_resnet18_cifar10_mixup": {"dataset.name": "cifar10", "augment.name": "mixup", "augment.alpha": 1.0,
                                      "augment.mode": "batch", "sched.decay_milestones": [100, 150], "trainer.epochs": 200},
    "preact_resnet18_cifar100_erm": {"dataset.name": "cifar100", "augment.name": "none", "optim.weight_decay": 1e-4,
                                     "sched.decay_milestones": [100, 150], "trainer.epochs": 200},
    "preact_resnet18_cifar100_mixup": {"dataset.name": "cifar100", "augment.name": "mixup", "augment.alpha": 1.0,
                                       "augment.mode": "batch", "trainer.epochs": 200, "trainer.batch_size": 128},
    "preact_resnet18_cifar100_cutmix": {"dataset.name": "cifar100", "augment.name": "cutmix", "augment.alpha": 0.2,
                                        "sched.name": "cosine", "sched.warmup_epochs": 0.0, "optim.weight_decay": 1e-4,
                                        "trainer.epochs": 200, "trainer.batch_size": 100},
    "resnet20_cifar10": {"model.name": "resnet20", "sched.decay_milestones": [82, 123], "trainer.epochs": 164},
    "resnet56_cifar10": {"model.name": "resnet56", "sched.decay_milestones": [82, 123], "trainer.epochs": 164},
    "resnet50_rsb_a3": {"model.name": "resnet50", "dataset.image_size": 160, "dataset.eval_image_size": 224,
                        "dataset.crop_pct": 0.95, "dataset.auto_augment": "rand-m6-mstd0.5-inc1", "optim.name": "lamb",
                        "optim.lr": 8e-3, "optim.weight_decay": 0.02, "optim.filter_bias_and_bn": True,
                        "augment.name": "switch", "augment.mixup_alpha": 0.1, "augment.cutmix_alpha": 1.0,
                        "augment.switch_prob": 0.5, "augment.label_smoothing": 0.0, "augment.loss": "bce",
                        "augment.bce_target_threshold": 0.2, "sched.warmup_epochs": 5.0, "sched.step_on": "epoch",
                        "trainer.epochs": 100, "trainer.batch_size": 2048},
    "deit_small_imagefolder": {"model.name": "deit_small_patch16_224", "model.drop_path_rate": 0.1,
                               "dataset.image_size": 224, "dataset.crop_pct": 0.875,
                               "dataset.auto_augment": "rand-m9-mstd0.5-inc1", "dataset.random_erasing": 0.25,
                               "dataset.random_erasing_mode": "pixel", "dataset.repeated_aug": 3,
                               "augment.name": "switch", "augment.mixup_alpha": 0.8, "augment.cutmix_alpha": 1.0,
                               "augment.switch_prob": 0.5, "augment.label_smoothing": 0.1, "optim.name": "adamw",
                               "optim.lr": 5e-4, "optim.lr_base_batch": 512, "optim.weight_decay": 0.05,
                               "sched.warmup_epochs": 5.0, "sched.min_lr": 1e-5, "sched.step_on": "epoch",
                               "trainer.epochs": 300, "trainer.batch_size": 1024, "trainer.ema.enabled": True,
                               "trainer.ema.decay": 0.99996},
    "resnet20_cifar10_jpeg_cpu": {"dataset.name": "imagefolder", "dataset.val_split": "test", "dataset.cache": True,
                                  "model.name": "resnet20", "augment.alpha": 0.2},
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_recipe_holds_the_published_settings(name):
    cfg = OmegaConf.structured(make_config(f"recipe={name}", "dataset.root=/data"))
    for key, value in PUBLISHED[name].items():
        got = OmegaConf.select(cfg, key)
        assert (list(got) if isinstance(got, (list, tuple)) or OmegaConf.is_list(got) else got) == value, (name, key)


def test_command_line_overrides_win_over_the_recipe():
    cfg = make_config("recipe=preact_resnet18_cifar10_mixup", "augment.alpha=0.4", "optim.lr=0.05",
                      "trainer.epochs=300", "sched.decay_milestones=[150,225]")
    assert (cfg.augment.alpha, cfg.optim.lr, cfg.trainer.epochs, cfg.sched.decay_milestones) == (0.4, 0.05, 300, [150, 225])
    assert cfg.optim.weight_decay == 1e-4 and cfg.model.name == "preact_resnet18"  # the rest of the recipe stays
    cfg = make_config("recipe=preact_resnet18_cifar10_mixup", "augment=cutmix")
    assert cfg.augment.name == "cutmix" and cfg.dataset.name == "cifar10"


def shrink(cfg) -> list:
    """Overrides that turn a recipe into 2 training steps and one evaluation on the CPU."""
    shrunk = [*TINY, "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.checkpoint=false"]
    if cfg.sched.name == "multistep":
        shrunk.append("sched.decay_milestones=[]")  # the recipe's are past the one epoch
    if cfg.sched.warmup_epochs > 0:
        shrunk.append("sched.warmup_epochs=0")
    if cfg.dataset.name == "imagefolder" and not cfg.dataset.cache:  # ResNet-50: smaller crops, same train/test gap
        shrunk += ["dataset.image_size=32", "dataset.eval_image_size=48"]
    if cfg.model.name.startswith(("deit", "vit")):  # a ViT is built for one input size
        shrunk += ["+model.kwargs.img_size=32", "dataset.eval_image_size=32"]
    return shrunk


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_trains_a_few_steps_on_tiny_data(name, tmp_path, monkeypatch):
    recipe = make_config(f"recipe={name}", *([] if name in BUNDLED else ["dataset.root=/unused"]))
    root = tmp_path / "data"
    if recipe.dataset.name == "cifar10_mini":  # the bundled set: nothing to make
        pass
    elif recipe.dataset.name == "cifar10":
        make_cifar10_folder(root, monkeypatch, n_train=40, n_test=16)
    elif recipe.dataset.name == "cifar100":
        make_cifar100_folder(root, monkeypatch)
    else:
        make_image_folder(root, per_class=8, val_per_class=4, size=32, splits=("train", recipe.dataset.val_split))
    offline = ["dataset.download=false"] if recipe.dataset.name in ("cifar10", "cifar100") else []
    where = [] if name in BUNDLED else [f"dataset.root={root}"]
    cfg = make_config(f"recipe={name}", *where, *offline, *shrink(recipe))
    summary = fit(cfg, tmp_path / "run")
    assert summary["status"] == "completed" and summary["epochs"] == 1
    assert 0.0 <= summary["final_val_acc1"] <= 100.0 and summary["final_val_nll"] > 0
    saved = summary["config"]
    # The recipe's model, mixing and optimizer are what ran.
    for group in ("model", "augment", "optim"):
        expected = OmegaConf.to_container(OmegaConf.structured(getattr(recipe, group)))
        if group == "model" and recipe.model.name.startswith(("deit", "vit")):
            expected["kwargs"] = {"img_size": 32}  # what shrink() set for the tiny images
        assert saved[group] == expected, group


def test_recipes_command_lists_every_recipe(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for recipe in list_recipes():
        assert recipe.name in out
    assert "78.1% top-1" in out and "Wightman et al. 2021" in out
    assert "switch mixup a=0.1/cutmix" in out  # the RSB A3 recipe's augment, as composed
    assert main(["recipes", "extra"]) == 2


# --------------------------------------------------------------------------- what the recipes needed


def test_lamb_from_timm_with_norms_and_biases_not_decayed():
    from timm.optim import Lamb

    from mixtrain.models import create_model
    from mixtrain.train.optim import create_optimizer

    cfg = make_config("recipe=resnet50_rsb_a3", "dataset.root=/data")
    model = create_model(make_config("model=resnet20").model, num_classes=10)
    opt = create_optimizer(cfg.optim, model)
    assert isinstance(opt, Lamb)
    assert opt.defaults["lr"] == 8e-3 and opt.defaults["max_grad_norm"] == 1.0 and opt.defaults["eps"] == 1e-6
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 0.02]
    assert all(p.ndim == 1 for g in opt.param_groups if g["weight_decay"] == 0.0 for p in g["params"])
    # LAMB scales each decayed tensor's update u by its trust ratio ||w|| / ||u||, so every
    # such tensor moves by exactly lr x ||w||; tensors without decay take a plain Adam step,
    # whose first step is lr x sign(grad) per element.
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    before = [p.detach().clone() for p in model.parameters()]
    torch.nn.functional.cross_entropy(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    for p, b, g in zip(model.parameters(), before, grads):
        if p.ndim > 1:
            assert ((p - b).norm() / b.norm()).item() == pytest.approx(8e-3, rel=1e-3)
        else:  # lr x g / (|g| + eps): lr where |g| >> eps (1e-6), less where the clipped grad is tiny
            moved = (p - b).abs()[g != 0]
            assert moved.max().item() <= 8e-3 * (1 + 1e-5)
            assert moved.median().item() == pytest.approx(8e-3, rel=1e-2)


def test_train_and_eval_sizes_differ_and_randaugment_runs(tmp_path):
    make_image_folder(tmp_path, per_class=4, val_per_class=2, size=40)
    cfg = make_config("recipe=resnet50_rsb_a3", f"dataset.root={tmp_path}", *TINY, "dataset.image_size=48",
                      "dataset.eval_image_size=64", "trainer.batch_size=4", "sched.warmup_epochs=0")
    data = build_data(cfg.dataset, cfg.trainer, torch.device("cpu"), seed=0)
    train_transforms = [type(t).__name__ for t in data.train.dataset.transform.transforms]
    # timm's transforms; no ColorJitter with RandAugment on, as in timm
    assert train_transforms == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "RandAugment",
                                "MaybePILToTensor"]
    resize, crop = data.val.dataset.transform.transforms[:2]
    assert resize.size == int(64 / 0.95) and crop.size == (64, 64)  # timm floors: 67 (236 -> 235 at 224)
    assert cfg.dataset.interpolation == "bicubic"  # resnet50's own (its pretrained config), as RSB trained
    assert next(iter(data.train))[0].shape == (4, 3, 48, 48)
    assert next(iter(data.val))[0].shape == (6, 3, 64, 64)
    # The cached path decodes the val split at the eval size.
    cached = make_config("dataset=imagefolder", f"dataset.root={tmp_path}", "dataset.cache=true", *TINY,
                         "dataset.image_size=16", "dataset.eval_image_size=24")
    data = build_data(cached.dataset, cached.trainer, torch.device("cpu"), seed=0)
    assert next(iter(data.train))[0].shape[-2:] == (16, 16) and next(iter(data.val))[0].shape[-2:] == (24, 24)


def test_recipe_config_errors_are_one_line(capsys, tmp_path):
    assert main(["train", "recipe=resnet50_rsb_a3", f"hydra.run.dir={tmp_path / 'run'}"]) == 2
    assert "dataset.root is required" in capsys.readouterr().err
    assert main(["train", "recipe=nope"]) == 2
    assert f"unknown recipe 'nope': choose one of {', '.join(RECIPES)}" in capsys.readouterr().err  # the registry's
    assert main(["train", "optim=lamb", "optim.betas=[0.9]"]) == 2
    assert "optim.betas must be two values" in capsys.readouterr().err
    assert main(["train", "dataset=imagefolder", "dataset.root=/x", "dataset.cache=true",
                 "dataset.auto_augment=rand-m9-mstd0.5"]) == 2
    assert "dataset.auto_augment needs dataset.cache=false" in capsys.readouterr().err


def test_a_glob_sweep_over_every_recipe_is_validated_job_by_job(monkeypatch, capsys, tmp_path):
    # `mixtrain train -m 'recipe=glob(*)' ...`: each recipe is composed and checked before any job runs
    # (dataset=imagefolder: in multirun mode Hydra composes the fixed part first, as any Hydra app does).
    import mixtrain.runs.launch as launch

    checked = []
    real = launch.to_object
    monkeypatch.setattr(launch, "to_object", lambda cfg: checked.append(cfg.model.name) or real(cfg))
    monkeypatch.setattr(launch, "claim_dir", lambda path: False)  # then refuse the sweep dir: no job runs
    sweep = tmp_path / "sweep"
    assert main(["train", "-m", "recipe=glob(*,exclude=mini_*)", "dataset=imagefolder", "dataset.root=/data", f"hydra.sweep.dir={sweep}"]) == 2
    assert "is being written by another mixtrain sweep" in capsys.readouterr().err and not sweep.exists()
    assert len(checked) == len(RECIPES) - len(BUNDLED)
    assert {"preact_resnet18", "resnet20", "resnet56", "resnet50", "deit_small_patch16_224", "resnet18"} == set(checked)
    assert main(["train", "-m", "recipe=glob(nothing*)", f"hydra.sweep.dir={sweep}"]) == 2
    assert "the sweep has no jobs" in capsys.readouterr().err
