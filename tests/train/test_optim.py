"""The optimizer and the schedule are timm's own (create_optimizer_v2, create_scheduler_v2), held to timm
itself: the LR at every step of a real run, the parameter groups, exact resume for every kind of schedule."""

import json
import math
import signal

import pytest
import timm
import torch
from helpers import TINY, compose_config, make_config
from timm.optim import create_optimizer_v2, list_optimizers
from timm.scheduler import create_scheduler_v2

from mixtrain.config import to_object
from mixtrain.errors import MixtrainError, RunStopped
from mixtrain.models import create_model
from mixtrain.train.engine import Part
from mixtrain.train.optim import create_optimizer, scaled_lr
from mixtrain.train.training import Training, fit

STEPS, EPOCHS = 7, 3
RUN = [*TINY, "trainer.batch_size=4", f"trainer.limit_train_batches={STEPS}", "trainer.limit_val_batches=1",
       f"trainer.epochs={EPOCHS}", "trainer.checkpoint=false", "optim.lr=0.1", "model=resnet20"]


class LrRecorder(Part):
    """The optimizer's LR after every update and after every epoch's evaluation (group 0's)."""

    def __init__(self, optimizer):
        self.optimizer, self.lrs, self.metrics = optimizer, [], []

    def step_end(self, trainer, out):
        self.lrs.append(self.optimizer.param_groups[0]["lr"])

    def eval_end(self, trainer, record):
        self.lrs.append(self.optimizer.param_groups[0]["lr"])
        self.metrics.append(record.get("val_acc1"))


def timms_lrs(name, warmup, on_updates, metrics, **kwargs):
    """What timm's scheduler gives, stepped as timm's train.py steps it (step_update after each update,
    step after each epoch's evaluation), with the arguments a timm user passes for the same settings."""
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    sched, _ = create_scheduler_v2(opt, sched=name, num_epochs=EPOCHS, warmup_epochs=warmup, warmup_lr=0.01,
                                   step_on_epochs=not on_updates, updates_per_epoch=STEPS, noise_seed=0, **kwargs)
    lrs, updates = [], 0
    for epoch in range(EPOCHS):
        for _ in range(STEPS):
            updates += 1
            sched.step_update(num_updates=updates)
            lrs.append(opt.param_groups[0]["lr"])
        sched.step(epoch + 1, metrics[epoch])
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


SCHEDULES = {"cosine": {}, "tanh": {}, "step": {"decay_epochs": 1}, "multistep": {"decay_milestones": [1, 2]},
             "poly": {"decay_rate": 2.0}, "plateau": {"patience_epochs": 0, "decay_rate": 0.5}}
SCHED_KEYS = {"decay_epochs": "sched.decay_epochs", "decay_milestones": "sched.decay_milestones",
              "decay_rate": "sched.decay_rate", "patience_epochs": "sched.patience_epochs"}


@pytest.mark.parametrize("on_updates", [True, False], ids=["update", "epoch"])
@pytest.mark.parametrize("warmup", [0, 1])
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_the_lr_at_every_step_is_timms(name, warmup, on_updates, tmp_path):
    if name == "plateau" and on_updates:
        with pytest.raises(MixtrainError, match="sched.step_on must be epoch for sched=plateau"):
            make_config(*RUN, f"sched={name}", "sched.step_on=update")
        return
    extra = [f"{SCHED_KEYS[k]}={v}".replace(" ", "") for k, v in SCHEDULES[name].items()]
    cfg = make_config(*RUN, f"sched={name}", f"sched.warmup_epochs={warmup}", "sched.warmup_lr=0.01",
                      f"sched.step_on={'update' if on_updates else 'epoch'}", *extra)
    training = Training(cfg, tmp_path / "run")
    recorder = LrRecorder(training.optimizer)
    training.parts.all.append(recorder)
    training.train()
    want = timms_lrs(name, warmup, on_updates, recorder.metrics, **SCHEDULES[name])
    assert recorder.lrs == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert len(set(recorder.lrs)) > 1  # the schedule moved


def test_noise_cycles_and_k_decay_reach_timms_cosine(tmp_path):
    cfg = make_config(*RUN, "sched=cosine", "sched.noise=[0.3,0.9]", "sched.noise_pct=0.5", "sched.k_decay=2.0",
                      "sched.cycle_limit=1", "sched.min_lr=0.001")
    training = Training(cfg, tmp_path / "run")
    recorder = LrRecorder(training.optimizer)
    training.parts.all.append(recorder)
    training.train()
    want = timms_lrs("cosine", 0, True, recorder.metrics, noise=[0.3, 0.9], noise_pct=0.5, k_decay=2.0, min_lr=0.001)
    assert recorder.lrs == pytest.approx(want, rel=1e-12)


def test_cooldown_and_cycles_fit_inside_the_run():
    cfg = make_config("sched=cosine", "trainer.epochs=12", "sched.cooldown_epochs=2", "sched.cycle_limit=2",
                      "sched.warmup_epochs=2", "sched.warmup_prefix=true")
    assert cfg.sched.schedule_epochs(12) == pytest.approx(4)  # (12 - 2 cooldown - 2 warmup) / 2 cycles
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    _, total = create_scheduler_v2(opt, sched="cosine", num_epochs=4, cooldown_epochs=2, cycle_limit=2,
                                   warmup_epochs=2, warmup_prefix=True)
    assert total == 12  # timm's own count of the epochs this schedule takes
    with pytest.raises(MixtrainError, match="sched.cooldown_epochs"):
        make_config("sched=cosine", "trainer.epochs=4", "sched.cooldown_epochs=4")


def test_every_optimizer_timm_lists_is_accepted_and_a_typo_gets_a_suggestion():
    for name in ("lion", "adopt", "lars", "sgdw", "adan", "madgrad", "nadamw", "muon", "lookahead_adamw"):
        assert make_config(f"optim.name={name}").optim.name == name
    assert len(list_optimizers()) > 40
    with pytest.raises(MixtrainError, match=r"optim.name='lamd' is not one of timm's \d+ optimizers; did you mean lamb"):
        make_config("optim.name=lamd")


@pytest.mark.parametrize("model_name", ["vit_tiny_patch16_224", "resnet18"])
def test_param_groups_with_layer_decay_are_timms(model_name):
    model = timm.create_model(model_name, num_classes=5, img_size=32) if "vit" in model_name else \
        timm.create_model(model_name, num_classes=5)
    cfg = make_config("optim=adamw", "optim.layer_decay=0.75", "optim.weight_decay=0.05", "optim.filter_bias_and_bn=true")
    ours = create_optimizer(cfg.optim, model)
    theirs = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75,
                                 betas=(0.9, 0.999), eps=1e-8)
    assert type(ours) is type(theirs) and len(ours.param_groups) == len(theirs.param_groups) > 4
    for a, b in zip(ours.param_groups, theirs.param_groups):
        assert [id(p) for p in a["params"]] == [id(p) for p in b["params"]]
        assert (a["weight_decay"], a["lr_scale"], a["lr"]) == (b["weight_decay"], b["lr_scale"], b["lr"])
    scales = sorted({g["lr_scale"] for g in ours.param_groups})
    assert scales[-1] == 1.0 and scales[0] < 0.75 ** 3  # the head at full LR, the stem decayed most


def test_head_lr_scales_the_classifier_groups_alone():
    model = create_model(make_config("model=resnet20").model, num_classes=10)
    cfg = make_config("optim=sgd", "optim.lr=0.01", "optim.head_lr=0.1", "optim.filter_bias_and_bn=true")
    opt = create_optimizer(cfg.optim, model)
    head = {id(p) for p in model.head.fc.parameters()}
    for group in opt.param_groups:
        in_head = {id(p) in head for p in group["params"]}
        assert len(in_head) == 1  # a group is all head or all backbone
        assert group.get("lr_scale", 1.0) == pytest.approx(10.0 if in_head == {True} else 1.0)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(p) for p in model.parameters() if p.ndim > 1}  # timm's 1-d exemption kept
    with pytest.raises(MixtrainError, match="optim.head_lr needs to know the model's classifier"):
        create_optimizer(cfg.optim, torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_optimizer_arguments_reach_timm_and_a_wrong_one_is_one_line():
    opt = create_optimizer(make_config("optim=adamw", "optim.betas=[0.8,0.99]", "optim.eps=1e-7").optim,
                           torch.nn.Linear(2, 2))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.8, 0.99) and opt.defaults["eps"] == 1e-7
    opt = create_optimizer(make_config("optim=sgd", "optim.momentum=0.8").optim, torch.nn.Linear(2, 2))
    assert isinstance(opt, torch.optim.SGD) and not opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.8
    opt = create_optimizer(make_config("optim.name=sgd").optim, torch.nn.Linear(2, 2))
    assert opt.defaults["nesterov"]  # timm's sgd is Nesterov's; the sgd preset is timm's `momentum`
    opt = create_optimizer(make_config("optim=lamb", "+optim.kwargs.trust_clip=true").optim, torch.nn.Linear(2, 2))
    assert type(opt).__name__ == "Lamb" and opt.defaults["trust_clip"]
    with pytest.raises(MixtrainError, match="refused its arguments .*nesterov"):
        create_optimizer(make_config("optim.name=lion", "+optim.kwargs.nesterov=true").optim, torch.nn.Linear(2, 2))
    with pytest.raises(MixtrainError, match="optim.kwargs.lr is a key of its own: set optim.lr"):
        make_config("+optim.kwargs.lr=0.3")


def test_lr_scales_from_a_base_batch_linearly_or_by_the_square_root():
    cfg = make_config("optim=sgd", "optim.lr=0.1", "optim.lr_base_batch=256", "trainer.batch_size=1024")
    assert scaled_lr(cfg.optim, 1024) == pytest.approx(0.4)  # timm's rule for SGD: linear
    cfg = make_config("optim=adamw", "optim.lr=1e-3", "optim.lr_base_batch=256")
    assert scaled_lr(cfg.optim, 1024) == pytest.approx(2e-3)  # timm's rule for ada*: sqrt
    cfg = make_config("optim=adamw", "optim.lr=1e-3", "optim.lr_base_batch=256", "optim.lr_base_scale=linear")
    assert scaled_lr(cfg.optim, 1024) == pytest.approx(4e-3)


class StopAfter(Part):
    """Ask the run to stop (as a SIGTERM does) after ``updates`` updates: it stops at the next sync point."""

    def __init__(self, request, updates):
        self.request, self.updates = request, updates

    def step_end(self, trainer, out):
        if trainer.state.global_step == self.updates:
            self.request.signum = signal.SIGTERM


# The plateau: an LR too small to move val top-1, so that every evaluation after the first is no
# improvement and halves the LR (patience 0); a resume that lost the plateau's state would count
# afresh and not halve it after epoch 2.
PLATEAU = ["sched=plateau", "sched.patience_epochs=0", "sched.decay_rate=0.5", "optim.lr=1e-7"]


@pytest.mark.parametrize("sched", [["sched=cosine", "sched.warmup_epochs=1"],
                                   ["sched=step", "sched.decay_epochs=1", "sched.step_on=epoch", "sched.warmup_epochs=1"],
                                   PLATEAU], ids=["cosine", "step", "plateau"])
def test_resume_is_bit_identical_for_every_kind_of_schedule(sched, tmp_path):
    args = [*TINY, "trainer.batch_size=4", "trainer.limit_train_batches=6", "trainer.limit_val_batches=2",
            "trainer.epochs=4", "trainer.log_every=2", "optim.lr=0.2", *sched]
    straight = fit(make_config(*args), tmp_path / "straight")
    training = Training(make_config(*args), tmp_path / "run")
    training.parts.all.append(StopAfter(training.stop, 14))  # inside epoch 2, after two evaluations
    with pytest.raises(RunStopped):
        training.train()
    resumed = fit(to_object(compose_config(*args, f"resume={tmp_path / 'run'}")), tmp_path / "run")
    assert resumed["weights_sha256"] == straight["weights_sha256"]
    lrs = [[json.loads(line)["lr"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
           for run in ("straight", "run")]
    assert lrs[0] == lrs[1] and len(set(lrs[0])) > 1
    if sched is PLATEAU:
        assert lrs[0] == pytest.approx([1e-7, 1e-7, 1e-7 / 2, 1e-7 / 4])  # halved after each evaluation but the first
    assert not math.isnan(resumed["final_val_acc1"])
