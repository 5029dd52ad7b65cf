import pytest
import torch
from helpers import make_config

from mixtrain.errors import MixtrainError
from mixtrain.models import create_model

# Published parameter counts: He et al. 2016 (0.27M, 0.85M), WRN paper (36.5M), mixup's PreAct-18 (11.17M).
PARAMS = {"resnet20": 269_722, "resnet56": 853_018, "preact_resnet18": 11_171_274, "wrn28_10": 36_479_194}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_bundled_models_have_published_sizes_and_stages(name):
    cfg = make_config(f"model={name}")
    model = create_model(cfg.model, num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    assert hasattr(model, "stem") and hasattr(model, "head") and len(model.stages) in (3, 4)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    hidden = model.stem(x)
    for stage in model.stages:
        hidden = stage(hidden)
    torch.testing.assert_close(model.head(hidden), model(x))


def test_resnet20_option_a_shortcut_has_no_parameters():
    model = create_model(make_config("model=resnet20").model, num_classes=10)
    block = model.stages[1][0]
    assert sum(p.numel() for p in block.shortcut.parameters()) == 0
    y = block.shortcut(torch.ones(1, 16, 8, 8))
    assert y.shape == (1, 32, 4, 4)
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0 and (y[:, 8:24] == 1).all()


def test_timm_model_by_name():
    cfg = make_config("model=timm", "model.name=resnet18")
    model = create_model(cfg.model, num_classes=7)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_unknown_timm_model_names_close_matches():
    cfg = make_config("model=timm", "model.name=resnet5O")
    with pytest.raises(MixtrainError, match="not a timm model.*resnet50"):
        create_model(cfg.model, num_classes=10)
