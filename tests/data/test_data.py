import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import REPO, TINY, make_cifar10_folder, make_config, make_image_folder
from PIL import Image

from mixtrain.data import build_data
from mixtrain.data.device_loader import DeviceLoader, epoch_generator
from mixtrain.data.mini import load_mini
from mixtrain.data.source import LoaderOptions
from mixtrain.errors import MixtrainError

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


def uint8_images(n, size=8, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def reference_normalize(x):
    return (x.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_train_batches_are_exact_crops_and_flips_of_the_padded_images():
    images, labels = uint8_images(37), torch.arange(37)
    loader = DeviceLoader(images, labels, MEAN, STD, train=True, options=LoaderOptions(8, seed=3), padding=2,
                          hflip=0.5, vflip=0.3)
    loader.set_epoch(5)
    g = epoch_generator(3, 5)
    order = torch.randperm(37, generator=g)
    offsets = torch.randint(0, 5, (37, 2), generator=g)
    flips = torch.rand(37, 2, generator=g) < torch.tensor([0.5, 0.3])
    assert flips[:, 0].any() and flips[:, 1].any() and not flips.all()
    padded = F.pad(images, (2, 2, 2, 2))
    batches = list(loader)
    assert len(batches) == 4  # 37 // 8, last partial batch dropped
    for b, (x, y) in enumerate(batches):
        for i in range(8):
            k = b * 8 + i
            idx = order[k]
            dy, dx = offsets[k].tolist()
            crop = padded[idx, :, dy:dy + 8, dx:dx + 8]
            if flips[k, 0]:
                crop = crop.flip(-1)
            if flips[k, 1]:
                crop = crop.flip(-2)
            assert y[i] == labels[idx]
            torch.testing.assert_close(x[i], reference_normalize(crop[None])[0], rtol=0, atol=1e-6)


def test_epochs_are_reproducible_and_differ():
    images, labels = uint8_images(64), torch.arange(64)
    loader = DeviceLoader(images, labels, MEAN, STD, train=True, options=LoaderOptions(16, seed=0))
    loader.set_epoch(1)
    first = [y for _, y in loader]
    again = [y for _, y in loader]
    loader.set_epoch(2)
    other = [y for _, y in loader]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    assert sorted(torch.cat(first).tolist()) == list(range(64))  # each sample once per epoch


def test_iter_from_resumes_mid_epoch_with_identical_batches():
    images, labels = uint8_images(64), torch.arange(64)
    loader = DeviceLoader(images, labels, MEAN, STD, train=True, options=LoaderOptions(8, seed=4))
    loader.set_epoch(3)
    full = list(loader)
    tail = list(loader.iter_from(5))
    assert len(tail) == 3
    for (xa, ya), (xb, yb) in zip(full[5:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_ranks_take_disjoint_slices_and_eval_counts_each_sample_once():
    images, labels = uint8_images(51), torch.arange(51)
    seen_train, seen_eval = [], []
    for rank in range(2):
        train = DeviceLoader(images, labels, MEAN, STD, train=True, options=LoaderOptions(5, seed=1, rank=rank, world_size=2))
        train.set_epoch(0)
        seen_train.append(torch.cat([y for _, y in train]).tolist())
        val = DeviceLoader(images, labels, MEAN, STD, train=False, options=LoaderOptions(4, rank=rank, world_size=2))
        seen_eval += torch.cat([y for _, y in val]).tolist()
    assert len(seen_train[0]) == len(seen_train[1]) == 25
    assert not set(seen_train[0]) & set(seen_train[1])
    assert sorted(seen_eval) == list(range(51))


def test_eval_batches_are_unaugmented_and_channels_last_when_asked():
    images, labels = uint8_images(10), torch.arange(10)
    loader = DeviceLoader(images, labels, MEAN, STD, train=False, options=LoaderOptions(4, channels_last=True))
    x = torch.cat([x for x, _ in loader])
    torch.testing.assert_close(x, reference_normalize(images), rtol=0, atol=1e-6)
    assert next(iter(loader))[0].is_contiguous(memory_format=torch.channels_last)


def test_batch_larger_than_dataset_is_a_clear_error():
    with pytest.raises(MixtrainError, match="trainer.batch_size"):
        DeviceLoader(uint8_images(5), torch.arange(5), MEAN, STD, train=True, options=LoaderOptions(8))


def test_bundled_mini_set_is_real_balanced_cifar10():
    train_x, train_y, classes = load_mini("train")
    val_x, val_y, _ = load_mini("val")
    assert train_x.shape == (5000, 3, 32, 32) and val_x.shape == (1000, 3, 32, 32)
    assert classes[:3] == ["airplane", "automobile", "bird"] and len(classes) == 10
    assert torch.bincount(train_y).tolist() == [500] * 10 and torch.bincount(val_y).tolist() == [100] * 10
    assert 80 < train_x.float().mean() < 160 and train_x.float().std() > 40  # real photos, not blank


def test_cifar_format_folder_loads_through_torchvision(tmp_path, monkeypatch):
    make_cifar10_folder(tmp_path, monkeypatch, n_train=60, n_test=21)
    cfg = make_config("dataset=cifar10", f"dataset.root={tmp_path}", "dataset.download=false", *TINY)
    data = build_data(cfg.dataset, cfg.trainer, torch.device("cpu"), seed=0)
    assert data.train.num_samples == 60 and data.val.num_samples == 21 and data.num_classes == 10
    assert sum(len(y) for _, y in data.val) == 21


def test_missing_cifar_says_where_to_put_the_files(tmp_path):
    cfg = make_config("dataset=cifar10", f"dataset.root={tmp_path}", "dataset.download=false")
    with pytest.raises(MixtrainError, match=r"cifar-10-python.tar.gz.*dataset.root") as info:
        build_data(cfg.dataset, cfg.trainer, torch.device("cpu"), seed=0)
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)


def test_streaming_image_folder_batches(tmp_path):
    make_image_folder(tmp_path, per_class=8, val_per_class=3, size=40)
    cfg = make_config("dataset=imagefolder", f"dataset.root={tmp_path}", "dataset.image_size=24", *TINY)
    data = build_data(cfg.dataset, cfg.trainer, torch.device("cpu"), seed=0)
    assert data.classes == ["ant", "bee", "cat"]
    x, y = next(iter(data.train))
    assert x.shape == (8, 3, 24, 24) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert sorted(torch.cat([y for _, y in data.val]).tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_cached_image_folder_decodes_exact_pixels(tmp_path):
    make_image_folder(tmp_path, per_class=4, val_per_class=2, size=16)
    cfg = make_config("dataset=imagefolder", f"dataset.root={tmp_path}", "dataset.cache=true",
                      "dataset.image_size=16", *TINY)
    data = build_data(cfg.dataset, cfg.trainer, torch.device("cpu"), seed=0)
    first = np.asarray(Image.open(tmp_path / "train" / "ant" / "0000.png"))
    assert torch.equal(data.train.images[0, :, 4:-4, 4:-4], torch.from_numpy(first.copy()).permute(2, 0, 1))


def test_folder_errors_name_the_problem(tmp_path):
    make_image_folder(tmp_path / "mismatch", classes=("ant", "bee"))
    (tmp_path / "mismatch" / "val" / "bee").rename(tmp_path / "mismatch" / "val" / "wasp")
    cases = {
        tmp_path / "absent": "does not exist",
        tmp_path / "mismatch": r"class folders differ.*only in train: \['bee'\].*only in val: \['wasp'\]",
    }
    (tmp_path / "empty" / "train" / "ant").mkdir(parents=True)
    (tmp_path / "empty" / "val" / "ant").mkdir(parents=True)
    cases[tmp_path / "empty"] = "no images in"
    for root, pattern in cases.items():
        cfg = make_config("dataset=imagefolder", f"dataset.root={root}", *TINY)
        with pytest.raises(MixtrainError, match=pattern):
            build_data(cfg.dataset, cfg.trainer, torch.device("cpu"), seed=0)


def test_subset_folder_links_the_first_images_of_each_class_and_the_whole_val_split(tmp_path, capsys):
    import importlib.util

    from mixtrain.data import FolderConfig, LoaderOptions, open_split

    script = REPO / "scripts" / "subset_folder.py"
    spec = importlib.util.spec_from_file_location("subset_folder", script)
    subset_folder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(subset_folder)
    make_image_folder(tmp_path / "full", per_class=6, val_per_class=3, size=8, splits=("train", "test"))
    assert subset_folder.main([str(tmp_path / "full"), str(tmp_path / "sub"), "--per-class", "4"]) == 0
    for name in ("ant", "bee", "cat"):
        linked = sorted(p.name for p in (tmp_path / "sub" / "train" / name).iterdir())
        assert linked == ["0000.png", "0001.png", "0002.png", "0003.png"]
        assert all((tmp_path / "sub" / "train" / name / f).is_symlink() for f in linked)
    cfg = FolderConfig(root=str(tmp_path / "sub"), val_split="test", cache=True, image_size=8)
    train = open_split(cfg, "train", True, LoaderOptions(4, "cpu", 0, False, 0))
    val = open_split(cfg, "test", False, LoaderOptions(4, "cpu", 0, False, 0))
    assert (train.loader.num_samples, val.loader.num_samples) == (12, 9)
    # A second call never overwrites: one line, exit code 2.
    assert subset_folder.main([str(tmp_path / "full"), str(tmp_path / "sub"), "--per-class", "2"]) == 2
    assert "exists" in capsys.readouterr().err


@pytest.mark.parametrize("size, hinted", [(16, True), (96, False)])
def test_a_streamed_folder_of_small_images_gets_the_cache_hint_once(tmp_path, size, hinted):
    from mixtrain.data import open_split
    from mixtrain.data.folder import CACHE_SPEEDUP, FolderConfig

    make_image_folder(tmp_path / "data", per_class=6, val_per_class=2, size=size)
    cfg = FolderConfig(root=str(tmp_path / "data"), image_size=size)
    train = open_split(cfg, "train", True, LoaderOptions(4))
    val = open_split(cfg, "val", False, LoaderOptions(4))
    expected = (f"the 18 images checked are at most {size}x{size} px: dataset.cache=true decodes the split once into "
                f"memory (about 0 MB) and trains about {CACHE_SPEEDUP}x as fast")
    assert train.note.startswith(expected) if hinted else train.note == ""
    assert "instead of RandomResizedCrop" in train.note or not hinted
    assert val.note == ""  # said once, for the training split
