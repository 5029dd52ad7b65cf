"""The debug group (issue 36): debug=fast, overfit, profile and anomaly, each an ordinary option of
``conf/debug/`` that composes with any run, each doing what it says on tiny data."""

import json
import textwrap
import time

import pytest
import torch
from helpers import TINY, make_config, make_image_folder

from mixtrain import layout
from mixtrain.config.registry import option_names
from mixtrain.errors import RunStopped
from mixtrain.mixing import method
from mixtrain.train.profiling import TimedLoader
from mixtrain.train.training import Training, fit

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ("ant", "bee", "cat")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("debug") / "data"
    return make_image_folder(root, classes=CLASSES, per_class=8, val_per_class=4, size=8)


def folder(root):
    return ["dataset=imagefolder", f"dataset.root={root}", "dataset.cache=true", "dataset.image_size=8", *TINY,
            "trainer.batch_size=6", "trainer.eval_batch_size=12"]


def read(run, name):
    text = (run / name).read_text()
    return [json.loads(line) for line in text.splitlines()] if name == layout.METRICS else json.loads(text)


@pytest.mark.parametrize("option", option_names("debug"))
def test_every_debug_option_composes_with_a_recipe_and_keeps_its_checks(option):
    # A recipe of 164 epochs with milestones at 82 and 123: the option must not break its checks.
    cfg = make_config("recipe=resnet20_cifar10", f"debug={option}")
    assert cfg.debug.name == option and cfg.trainer.epochs == 164
    assert make_config().debug is None  # no debug option by default


def test_fast_runs_the_first_epoch_of_the_real_schedule_and_keeps_nothing(data, tmp_path):
    summary = fit(make_config(*folder(data), "trainer.epochs=5", "optim.lr=0.05", "debug=fast"), tmp_path / "run")
    records = read(tmp_path / "run", layout.METRICS)
    assert [r["epoch"] for r in records] == [0] and summary["debug"] == {"name": "fast"}
    # The first epoch of the 5-epoch cosine schedule (stepped per update: 3 batches), not a 1-epoch one.
    assert records[0]["lr"] == pytest.approx(0.05 * 0.5 * (1 + torch.cos(torch.tensor(3 / 15 * torch.pi)).item()))
    assert not (tmp_path / "run" / layout.LAST).exists() and not (tmp_path / "run" / layout.BEST).exists()
    assert (tmp_path / "run" / layout.LOGITS).is_file()  # the run's end (its final evaluation) was reached


def test_overfit_trains_on_fixed_unmixed_batches_until_train_top1_is_100(data, tmp_path):
    cfg = make_config(*folder(data), "augment=mixup", "augment.label_smoothing=0.2", "optim.lr=0.1", "debug=overfit",
                      "debug.batches=2", "debug.max_epochs=60")
    training = Training(cfg, tmp_path / "run")
    assert training.mixer.cfg.name == "none" and training.mixer.cfg.label_smoothing == 0.0  # no mixing, no smoothing
    loader = training.data.train
    assert training.data.val is loader and not loader.train  # read as evaluation reads: unaugmented
    batches = [labels.tolist() for _, labels in loader]
    assert len(batches) == 2 and sorted(sum(batches, [])) == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    loader.set_epoch(7)
    assert [labels.tolist() for _, labels in loader] == batches  # the same batches every epoch
    summary = training.train()
    records = read(tmp_path / "run", layout.METRICS)
    first = next(r["epoch"] for r in records if r["train_acc"] == 100.0)
    assert summary["debug"]["reached_100"] and summary["debug"]["epoch"] == first == records[-1]["epoch"]
    assert f"debug=overfit: train top-1 reached 100% on the 2 fixed batch(es) (12 images) at epoch {first}" in \
        (tmp_path / "run" / layout.TRAIN_LOG).read_text()


def test_overfit_says_when_it_did_not_get_there(data, tmp_path):
    summary = fit(make_config(*folder(data), "optim.lr=1e-6", "debug=overfit", "debug.max_epochs=2"), tmp_path / "run")
    assert summary["epochs"] == 2 and not summary["debug"]["reached_100"]
    assert "debug=overfit: train top-1 did not reach 100% on the 1 fixed batch(es) (6 images) in 2 epochs" in \
        (tmp_path / "run" / layout.TRAIN_LOG).read_text()


def test_profile_writes_a_trace_the_top_operators_and_the_data_wait_share(data, tmp_path):
    summary = fit(make_config(*folder(data), "trainer.epochs=3", "debug=profile", "debug.warmup=1", "debug.steps=2"),
                  tmp_path / "run")
    out = tmp_path / "run" / layout.PROFILE
    found = read(out, layout.PROFILE_SUMMARY)
    assert found["steps"] == 2 and 0.0 < found["data_wait_share"] < 1.0 and summary["debug"]["steps"] == 2
    trace = read(out, layout.PROFILE_TRACE)
    assert any(e.get("name", "").startswith("aten::convolution") for e in trace["traceEvents"])
    assert "Self CPU" in (out / layout.PROFILE_OPERATORS).read_text()
    assert summary["epochs"] == 1  # the profiled steps are the run: one epoch, warmup + steps batches


def test_the_data_wait_is_the_time_the_step_waited_for_its_batch():
    class Slow:
        def __len__(self):
            return 5

        def iter_from(self, start):
            for step in range(start, 5):
                time.sleep(0.03 if step % 2 else 0.0)
                yield step

    timed = TimedLoader(Slow(), limit=4)
    assert list(timed) == [0, 1, 2, 3] and len(timed) == 4
    assert [w >= 0.03 for w in timed.waits] == [False, True, False, True]


def test_anomaly_checks_the_first_steps_then_gets_out_of_the_way(data, tmp_path):
    summary = fit(make_config(*folder(data), "augment=regmixup", "debug=anomaly", "debug.steps=2"), tmp_path / "run")
    assert summary["status"] == "completed" and not torch.is_anomaly_enabled()
    assert "debug=anomaly: the first 2 steps had finite gradients" in (tmp_path / "run" / layout.TRAIN_LOG).read_text()


def test_anomaly_stops_at_a_mixed_target_that_does_not_sum_to_one(data, tmp_path, monkeypatch):
    real = method.mix_targets  # where the Mixer base applies a plan to the targets
    monkeypatch.setattr(method, "mix_targets", lambda targets, plan: 0.9 * real(targets, plan))  # a soft-label mismatch
    with pytest.raises(RunStopped, match=r"debug=anomaly: at epoch 0 step 0, 6 of 6 mixed target rows are not "
                                         r"distributions \(row 0 sums to 0\.9000, expected 1"):
        fit(make_config(*folder(data), "augment=mixup", "debug=anomaly"), tmp_path / "run")
    assert read(tmp_path / "run", layout.SUMMARY)["status"] == "failed"


NAN_NET = """
    import torch
    from torch import nn


    class SqrtAtZero(nn.Module):
        # sqrt(0) has an infinite gradient; times the zeros that made the 0, NaN for `scale`.
        def __init__(self, num_classes):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))
            self.fc = nn.Linear(3, num_classes)

        def forward(self, x):
            return self.fc(torch.sqrt(self.scale * torch.zeros_like(x.mean((2, 3)))))
"""


def test_anomaly_names_the_backward_op_that_made_a_nan(data, tmp_path, monkeypatch):
    (tmp_path / "nan_net.py").write_text(textwrap.dedent(NAN_NET))
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = make_config(*folder(data), "model=custom", "model._target_=nan_net.SqrtAtZero", "debug=anomaly")
    with pytest.warns(UserWarning, match="Error detected in"), \
            pytest.raises(RunStopped, match=r"debug=anomaly: autograd at epoch 0 step 0: Function 'MulBackward0' "
                                            r"returned nan values"):
        fit(cfg, tmp_path / "run")
    assert not torch.is_anomaly_enabled()
