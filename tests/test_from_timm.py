"""docs/guides/from-timm.md maps every flag of timm's train.py to a mixtrain key: each key and option it
names exists in the schemas and conf/, and every flag of train.py v1.0.28 has its row."""

import dataclasses
import re
import typing
from pathlib import Path

import pytest

from mixtrain.config import TrainConfig, TrainerConfig, config_dir
from mixtrain.config.registry import GROUPS, options
from mixtrain.options import register_configs

PAGE = Path(__file__).resolve().parents[1] / "docs" / "guides" / "from-timm.md"

# The flags of timm's train.py v1.0.28 (its argparse, read from `git show v1.0.28:train.py`).
TIMM_FLAGS = """--config --data-dir --dataset --train-split --val-split --train-num-samples --val-num-samples
--dataset-download --class-map --input-img-mode --input-key --target-key --dataset-trust-remote-code --model
--pretrained --pretrained-path --initial-checkpoint --resume --no-resume-opt --num-classes --gp --img-size --in-chans
--input-size --crop-pct --mean --std --interpolation --batch-size --validation-batch-size --channels-last --fuser
--grad-accum-steps --grad-checkpointing --fast-norm --model-kwargs --head-init-scale --head-init-bias
--torchcompile-mode --torchscript --torchcompile --device --amp --amp-dtype --model-dtype --no-ddp-bb
--synchronize-step --device-modules --opt --opt-eps --opt-betas --momentum --weight-decay --clip-grad --clip-mode
--layer-decay --layer-decay-min-scale --layer-decay-no-opt-scale --opt-kwargs --sched --sched-on-updates --lr
--lr-base --lr-base-size --lr-base-scale --lr-noise --lr-noise-pct --lr-noise-std --lr-cycle-mul --lr-cycle-decay
--lr-cycle-limit --lr-k-decay --warmup-lr --min-lr --epochs --epoch-repeats --start-epoch --decay-milestones
--decay-epochs --warmup-epochs --warmup-prefix --cooldown-epochs --patience-epochs --decay-rate --no-aug
--train-crop-mode --scale --ratio --hflip --vflip --color-jitter --color-jitter-prob --grayscale-prob
--gaussian-blur-prob --aa --aug-repeats --aug-splits --jsd-loss --bce-loss --bce-sum --bce-target-thresh
--bce-pos-weight --reprob --remode --recount --resplit --mixup --cutmix --cutmix-minmax --mixup-prob
--mixup-switch-prob --mixup-mode --mixup-off-epoch --smoothing --train-interpolation --drop --drop-connect
--drop-path --drop-block --bn-momentum --bn-eps --sync-bn --dist-bn --split-bn --model-ema --model-ema-force-cpu
--model-ema-decay --model-ema-warmup --seed --worker-seeding --log-interval --val-interval --recovery-interval
--checkpoint-hist --workers --save-images --pin-mem --no-prefetcher --output --experiment --eval-metric --tta
--use-multi-epochs-loader --log-wandb --wandb-project --wandb-tags --wandb-resume-id --naflex-loader
--kd-model-name""".split()


def rows():
    for line in PAGE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            yield cells


def field_path_exists(schema, path):
    for i, name in enumerate(path):
        found = {f.name: f for f in dataclasses.fields(schema)}.get(name)
        if found is None:
            return False
        if name == "kwargs":  # any argument of the class it builds
            return True
        if i + 1 < len(path):
            kind = typing.get_type_hints(schema).get(name)
            if not dataclasses.is_dataclass(kind):
                return False
            schema = kind
    return True


def key_exists(key):
    group, *rest = key.split(".")
    if group in GROUPS:
        return any(field_path_exists(entry.schema, rest) for entry in options(group).values())
    if group == "trainer":
        return field_path_exists(TrainerConfig, rest)
    if group == "hydra":
        return key in ("hydra.run.dir", "hydra.sweep.dir")
    return not rest and field_path_exists(TrainConfig, [group])


def test_every_key_and_option_the_page_names_exists():
    register_configs()
    named = 0
    for _, mixtrain, note in rows():
        for token in re.findall(r"`([^`]+)`", f"{mixtrain} {note}"):
            for part in token.split():
                top = part.split(".")[0].split("=")[0]
                if top in (*GROUPS, "trainer", "hydra") and re.fullmatch(r"[a-z_.]+(=.*)?", part):
                    key = part.split("=")[0]
                    assert key_exists(key), f"{key} ({token}) is not a config key"
                    named += 1
                elif re.fullmatch(r"[a-z]+=[a-z_0-9<>]+", part) and part.split("=")[0] in GROUPS:
                    group, option = part.split("=")
                    if option != "<option>" and option != "<name>":
                        assert (config_dir() / group / f"{option}.yaml").is_file(), f"no option {part}"
    assert named > 100


def test_every_flag_of_timms_train_py_has_a_row():
    flags = set()
    for timm_flags, _, _ in rows():
        flags.update(re.findall(r"--[a-z0-9-]+", timm_flags))
    missing = [f for f in TIMM_FLAGS if f not in flags and not f.startswith(("--naflex", "--kd-"))]
    assert missing == []


@pytest.mark.parametrize("key", ["optim.layer_decay", "sched.cycle_mul", "dataset.color_jitter", "trainer.ema.decay",
                                 "model.kwargs.global_pool"])
def test_the_key_check_finds_real_keys(key):
    register_configs()
    assert key_exists(key)


def test_the_key_check_refuses_a_made_up_key():
    register_configs()
    assert not key_exists("optim.layer_decy") and not key_exists("trainer.ema.speed") and not key_exists("colour")
