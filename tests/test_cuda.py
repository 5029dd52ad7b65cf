"""The CUDA path, run for real on a GPU (issue 15); every test skips without CUDA.

fp16 with a GradScaler, bf16, channels_last, torch.compile, the device-resident loader on
the GPU, exact resume on the GPU, and the NaN policy under fp16. Run them on a GPU machine
with `python -m pytest tests/test_cuda.py` (scripts/gpu_reproduce.sh does).
"""

import json

import pytest
import torch
from helpers import make_config, make_image_folder

from mixtrain.artifacts import checkpoint
from mixtrain.data.device_loader import DeviceLoader
from mixtrain.errors import RunStopped
from mixtrain.train.training import fit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

GPU = ["trainer.device=cuda", "trainer.epochs=2", "trainer.batch_size=16", "trainer.eval_batch_size=32",
       "trainer.num_workers=2", "trainer.log_every=2"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("cuda"), per_class=32, val_per_class=8, size=32)


def folder(root, cache=True, *extra):
    return ["dataset=imagefolder", f"dataset.root={root}", f"dataset.cache={str(cache).lower()}",
            "dataset.image_size=32", *GPU, *extra]


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("cache", [True, False])
def test_amp_trains_on_the_gpu(data_root, tmp_path, dtype, cache):
    summary = fit(make_config(*folder(data_root, cache), "trainer.amp=true", f"trainer.amp_dtype={dtype}",
                              "augment=mixup", "optim.lr=0.05"), tmp_path / "run")
    assert summary["status"] == "completed" and summary["final_val_acc1"] > 50  # the easy colour task
    saved = checkpoint.load(tmp_path / "run" / "last.pt")
    if dtype == "fp16":
        assert saved["scaler"]["scale"] > 0  # a live GradScaler's state is in the checkpoint


def test_channels_last_and_compile(data_root, tmp_path):
    summary = fit(make_config(*folder(data_root), "trainer.channels_last=true", "trainer.compile=true",
                              "trainer.amp=true", "trainer.amp_dtype=bf16"), tmp_path / "run")
    assert summary["status"] == "completed"


def test_device_resident_loader_on_the_gpu_gives_the_cpus_batches():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (64, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(64) % 10
    common = dict(batch_size=16, mean=[0.5] * 3, std=[0.25] * 3, train=True, seed=3, channels_last=True)
    cpu = DeviceLoader(images, labels, **common)
    gpu = DeviceLoader(images.cuda(), labels.cuda(), **common)
    for (a, y), (b, z) in zip(cpu, gpu):
        assert b.is_cuda and b.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(a, b.cpu()) and torch.equal(y, z.cpu())


def test_resume_on_the_gpu(data_root, tmp_path, monkeypatch):
    """A crash in epoch 2, then resume: the final weights match a run left alone. cuDNN's
    default convolution algorithms are not deterministic, so this checks closeness; with
    torch.backends.cudnn.deterministic the two are bit-identical (checked second)."""
    from mixtrain.train.engine import Trainer

    args = [*folder(data_root), "trainer.epochs=3", "optim.lr=0.05"]
    for deterministic in (False, True):
        monkeypatch.setattr(torch.backends.cudnn, "deterministic", deterministic)
        monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
        straight, crashed = tmp_path / f"straight{deterministic}", tmp_path / f"crashed{deterministic}"
        fit(make_config(*args), straight)
        real = Trainer.train_epoch

        def crash(self, epoch, real=real):
            if epoch == 2:
                raise KeyboardInterrupt
            return real(self, epoch)

        monkeypatch.setattr(Trainer, "train_epoch", crash)
        with pytest.raises(KeyboardInterrupt):
            fit(make_config(*args), crashed)
        monkeypatch.setattr(Trainer, "train_epoch", real)
        fit(make_config(*args, f"resume={crashed}"), crashed)
        a, b = (checkpoint.load(d / "last.pt")["model"] for d in (straight, crashed))
        for key in a:
            if deterministic:
                assert torch.equal(a[key], b[key]), key
            else:
                torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-3)


def test_nan_policy_under_fp16(data_root, tmp_path, monkeypatch):
    import mixtrain.train.training as training

    monkeypatch.setattr(training, "create_loss",
                        lambda cfg: lambda logits, targets: (logits.float().sum() * float("inf")))
    cfg = make_config(*folder(data_root), "trainer.amp=true", "trainer.amp_dtype=fp16", "trainer.nan_skip_limit=3")
    with pytest.raises(RunStopped, match="fp16 GradScaler skipped more than trainer.nan_skip_limit=3"):
        fit(cfg, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"
