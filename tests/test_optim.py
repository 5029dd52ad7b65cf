import math

import pytest
import torch
from helpers import make_config

from mixtrain.models import create_model
from mixtrain.train.optim import create_optimizer, create_scheduler, param_groups


def lrs(cfg, steps_per_epoch):
    model = torch.nn.Linear(2, 2)
    opt = create_optimizer(cfg.optim, model)
    sched = create_scheduler(cfg.sched, opt, steps_per_epoch, cfg.trainer.epochs)
    out = []
    for _ in range(steps_per_epoch * cfg.trainer.epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_with_linear_warmup():
    cfg = make_config("sched=cosine", "sched.warmup_epochs=1", "sched.warmup_start_factor=0.1", "trainer.epochs=5",
                      "optim.lr=0.2", "sched.min_lr=0.002")
    values = lrs(cfg, steps_per_epoch=10)
    assert values[0] == pytest.approx(0.02)  # 0.1 x lr at step 0
    assert values[5] == pytest.approx(0.2 * (0.1 + 0.9 * 0.5))  # halfway through warmup
    assert values[10] == pytest.approx(0.2)  # warmup done: cosine starts at the peak
    assert values[30] == pytest.approx(0.002 + (0.2 - 0.002) * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert min(values) >= 0.002 - 1e-12
    assert all(b <= a + 1e-12 for a, b in zip(values[10:], values[11:]))  # monotone after warmup


def test_multistep_divides_at_milestone_epochs():
    cfg = make_config("sched=multistep", "sched.milestones=[2,4]", "sched.gamma=0.1", "trainer.epochs=5", "optim.lr=0.1")
    values = lrs(cfg, steps_per_epoch=3)
    assert values[:6] == pytest.approx([0.1] * 6)
    assert values[6:12] == pytest.approx([0.01] * 6)
    assert values[12:] == pytest.approx([0.001] * 3)


def test_multistep_default_milestones_are_half_and_three_quarters():
    cfg = make_config("sched=multistep", "trainer.epochs=8", "optim.lr=1.0")
    values = lrs(cfg, steps_per_epoch=1)
    assert values == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])


def test_weight_decay_can_exempt_norm_and_bias():
    model = create_model(make_config("model=resnet20").model, num_classes=10)
    groups = param_groups(model, 5e-4, filter_bias_and_bn=True)
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0]
    assert all(p.ndim > 1 for p in groups[0]["params"]) and all(p.ndim == 1 for p in groups[1]["params"])
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(model.parameters()))
    assert len(param_groups(model, 5e-4, filter_bias_and_bn=False)) == 1


def test_sgd_and_adamw_settings_reach_torch():
    cfg = make_config("optim=sgd", "optim.nesterov=true", "optim.momentum=0.8")
    opt = create_optimizer(cfg.optim, torch.nn.Linear(2, 2))
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.8
    cfg = make_config("optim=adamw", "optim.betas=[0.8,0.99]")
    opt = create_optimizer(cfg.optim, torch.nn.Linear(2, 2))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.8, 0.99) and opt.defaults["lr"] == 1e-3
