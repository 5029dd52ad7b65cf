"""The streaming transforms are timm's create_transform, and a timm model's own preprocessing (timm's
resolve_data_config) is what a run uses and what export writes: each held to timm itself."""

import json

import pytest
import timm
import torch
from helpers import TINY, make_config, make_image_folder, run_cli
from torchvision.transforms import v2
from timm.data import create_transform, resolve_data_config

from mixtrain.data import LoaderOptions, open_split
from mixtrain.data.images import load_rgb
from mixtrain.data.streaming import seeded


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("photos"), per_class=2, val_per_class=1, size=40, ext="jpg")


# mixtrain's keys, and the create_transform arguments a timm user writes for the same settings.
SETTINGS = {
    "defaults": ([], dict(color_jitter=0.4, interpolation="bilinear")),
    "jitter_vflip_bicubic_ratio": (["dataset.color_jitter=0.3", "dataset.vflip=0.5", "dataset.hflip=0.0",
                                    "dataset.interpolation=bicubic", "dataset.ratio=[0.5,2.0]",
                                    "dataset.scale=[0.3,0.9]"],
                                   dict(color_jitter=0.3, vflip=0.5, hflip=0.0, interpolation="bicubic",
                                        ratio=(0.5, 2.0), scale=(0.3, 0.9))),
    "random_interpolation_grey_blur": (["dataset.train_interpolation=random", "dataset.grayscale_prob=0.5",
                                        "dataset.gaussian_blur_prob=0.5", "dataset.color_jitter_prob=0.5"],
                                       dict(interpolation="random", grayscale_prob=0.5, gaussian_blur_prob=0.5,
                                            color_jitter=0.4, color_jitter_prob=0.5)),
    "randaugment": (["dataset.auto_augment=rand-m9-mstd0.5-inc1"],
                    dict(auto_augment="rand-m9-mstd0.5-inc1", interpolation="bilinear")),
}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_a_training_image_is_what_timms_create_transform_makes(photos, name):
    keys, timm_args = SETTINGS[name]
    cfg = make_config("dataset=imagefolder", f"dataset.root={photos}", "dataset.image_size=24", *keys, *TINY)
    split = open_split(cfg.dataset, "train", True, LoaderOptions(4))
    dataset = split.loader.dataset
    theirs = create_transform(24, is_training=True, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                              use_prefetcher=True, **timm_args)
    for index, seed in [(0, 11), (3, 12345), (5, 2**40 + 7)]:
        ours, _, _ = dataset[(index, seed)]
        with seeded(seed):
            want = theirs(load_rgb(dataset.samples[index][0]))
        assert ours.dtype == torch.uint8 and ours.shape == (3, 24, 24)
        assert torch.equal(ours, want), (name, index)


def test_an_evaluation_image_is_timms_resize_and_crop(photos):
    cfg = make_config("dataset=imagefolder", f"dataset.root={photos}", "dataset.image_size=24",
                      "dataset.crop_pct=0.8", "dataset.interpolation=bicubic", "dataset.crop_mode=squash", *TINY)
    split = open_split(cfg.dataset, "val", False, LoaderOptions(4))
    theirs = create_transform(24, is_training=False, crop_pct=0.8, crop_mode="squash", interpolation="bicubic",
                              use_prefetcher=True)
    image = load_rgb(split.loader.dataset.samples[1][0])
    assert torch.equal(split.loader.dataset[1][0], theirs(image))


MODELS = ["vit_tiny_patch16_224", "resnet18", "convnext_atto"]


@pytest.mark.parametrize("model", MODELS)
def test_a_timm_models_own_preprocessing_fills_what_the_data_leaves_unset(model, photos):
    cfg = make_config("dataset=imagefolder", f"dataset.root={photos}", "model=timm", f"model.name={model}")
    want = resolve_data_config({}, model=timm.create_model(model, pretrained=False))
    got = cfg.dataset
    assert (got.image_size, got.interpolation, got.crop_pct, got.crop_mode) == \
        (want["input_size"][-1], want["interpolation"], want["crop_pct"], want["crop_mode"])
    assert got.mean == pytest.approx(list(want["mean"])) and got.std == pytest.approx(list(want["std"]))
    assert set(got.preprocessing_from.values()) == {"model"}
    # What the user sets wins, as timm's own resolve_data_config has it.
    cfg = make_config("dataset=imagefolder", f"dataset.root={photos}", "model=timm", f"model.name={model}",
                      "dataset.interpolation=nearest", "dataset.image_size=64")
    assert (cfg.dataset.interpolation, cfg.dataset.image_size) == ("nearest", 64)
    assert cfg.dataset.preprocessing_from["interpolation"] == "set"
    assert cfg.dataset.crop_pct == want["crop_pct"] and cfg.dataset.preprocessing_from["crop_pct"] == "model"


def test_the_run_trains_says_and_exports_the_models_preprocessing(photos, tmp_path):
    want = resolve_data_config({}, model=timm.create_model("resnet18", pretrained=False))
    run = tmp_path / "run"
    result = run_cli("train", "dataset=imagefolder", f"dataset.root={photos}", "model=timm", "model.name=resnet18",
                     "dataset.image_size=32", *TINY, "trainer.batch_size=2", f"hydra.run.dir={run}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("preprocessing: "))
    assert "32 px (set)" in line and f"{want['interpolation']}" in line and "(model resnet18)" in line
    summary = json.loads((run / "summary.json").read_text())
    assert summary["config"]["dataset"]["interpolation"] == want["interpolation"]
    assert summary["config"]["dataset"]["crop_pct"] == want["crop_pct"]
    exported = run_cli("export", f"checkpoint={run}", "format=safetensors", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    written = json.loads((run / "export-safetensors" / "config.json").read_text())["pretrained_cfg"]
    assert (written["interpolation"], written["crop_pct"], written["crop_mode"], written["input_size"]) == \
        (want["interpolation"], want["crop_pct"], want["crop_mode"], [3, 32, 32])
    assert written["mean"] == pytest.approx(list(want["mean"])) and written["std"] == pytest.approx(list(want["std"]))


def test_the_cached_path_resizes_with_the_interpolation(tmp_path):
    make_image_folder(tmp_path, per_class=2, val_per_class=1, size=12)
    image = v2.functional.pil_to_tensor(load_rgb(str(sorted((tmp_path / "val" / "ant").iterdir())[0])))
    for mode in ("nearest", "bicubic"):
        cfg = make_config("dataset=imagefolder", f"dataset.root={tmp_path}", "dataset.cache=true",
                          "dataset.image_size=8", f"dataset.interpolation={mode}", *TINY)
        split = open_split(cfg.dataset, "val", False, LoaderOptions(8))
        want = v2.functional.resize(image, [8, 8], interpolation=v2.InterpolationMode(mode), antialias=True)
        assert torch.equal(split.loader.images[0], want), mode
    with pytest.raises(Exception, match="resizes PIL images only"):
        open_split(make_config("dataset=imagefolder", f"dataset.root={tmp_path}", "dataset.cache=true",
                               "dataset.interpolation=lanczos", *TINY).dataset, "val", False, LoaderOptions(8))
