"""The command line: help, config printing, errors (one line, exit 2), runs and sweeps."""

import json

import pytest
from helpers import TINY, compose_config, make_image_folder, run_cli

from mixtrain.cli import main
from mixtrain.config import config_dir
from mixtrain.config.registry import option_names

GROUP_OPTIONS = sorted(
    (group.name, option.stem)
    for group in config_dir().iterdir() if group.is_dir()
    for option in group.glob("*.yaml")
)
REQUIRED = {("dataset", "imagefolder"): ["dataset.root=/tmp/x"], ("model", "timm"): ["model.name=resnet18"],
            ("model", "custom"): ["model._target_=my_pkg.Net"], ("dataset", "custom"): ["dataset._target_=my_pkg.Data"],
            ("dataset", "hf"): ["dataset.path=/tmp/x"], ("logger", "custom"): ["logger.custom._target_=my_pkg.Logger"],
            ("dataset", "webdataset"): ['dataset.train_urls="/tmp/t-{0..1}.tar"', "dataset.val_urls=/tmp/v-0.tar"]}


@pytest.mark.parametrize("group,option", GROUP_OPTIONS)
def test_every_config_group_option_composes_and_validates(group, option):
    from mixtrain.config import to_object

    cfg = to_object(compose_config(f"{group}={option}", *REQUIRED.get((group, option), [])))
    assert getattr(cfg, group) is not None


@pytest.mark.parametrize("override,message", [
    ("trainer.epochs=abc", "trainer.epochs: Value 'abc'"),
    ("trainer.batch_size=0", "trainer.batch_size must be >= 1"),
    ("optim.momentum=1.5", "optim.momentum must be in [0, 1)"),
    ("trainer.foo=1", "unknown config key 'trainer.foo'"),
    ("trainer.epoch=3", "did you mean trainer.epochs?"),
    ("lr=0.1", "did you mean optim.lr?"),
    ("+foo=1", "unknown config key 'foo'"),
    ("model=resnet21", f"unknown model 'resnet21': choose one of {', '.join(option_names('model'))}"),
    ("dataset=imagenet", "unknown dataset 'imagenet'"),
    ("optim=lion", "unknown optim 'lion'"),
    ("dataset=imagefolder", "dataset.root is required"),
    ("trainer.device=tpu", "trainer.device must be auto, cpu, cuda"),
    ("trainer.amp_dtype=fp8", "trainer.amp_dtype must be one of fp16, bf16"),
    ("sched=multistep sched.decay_milestones=[100]", "sched.decay_milestones must be < trainer.epochs"),
    ("augment.label_smoothing=1.5", "augment.label_smoothing must be in [0, 1)"),
    ("augment.disable_epochs=99", "augment.disable_epochs must be <= trainer.epochs"),
    ("seed=-3", "seed must be >= 0"),
    ("augment=mixup augment.alpha=-0.2", "augment.alpha must be >= 0.0 (got -0.2)"),
    ("augment=cutmix augment.prob=1.5", "augment.prob must be a probability in [0, 1] (got 1.5)"),
    ("augment=switch augment.switch_prob=-0.1", "augment.switch_prob must be a probability in [0, 1]"),
    ("augment=blend", f"unknown augment 'blend': choose one of {', '.join(option_names('augment'))}"),
    ("augment=mixup augment.mode=row", "augment.mode must be one of batch, pair, elem (got 'row')"),
    ("augment=mixup augment.disable_epochs=16", "augment.disable_epochs must be <= trainer.epochs (15)"),
    ("trainer.batch_size=-4", "trainer.batch_size must be >= 1"),
    ("trainer.epochs=2.5", "trainer.epochs: Value '2.5' of type 'float' could not be converted to Integer"),
    ("augment=manifold augment.layers=[0,4]", "augment.layers must be in 0..3 for resnet20 (3 stages)"),
    ("trainer.on_nan=ignore", "trainer.on_nan must be one of stop, skip"),
    ("dataset=imagefolder dataset.root=/x dataset.on_bad_image=warn", "dataset.on_bad_image must be one of skip, error"),
    # issue 22: non-finite numbers, seeds NumPy cannot take, device names torch cannot parse
    ("augment=mixup augment.alpha=inf", "augment.alpha must be a finite number (got inf)"),
    ("augment=switch augment.cutmix_alpha=inf", "augment.cutmix_alpha must be a finite number (got inf)"),
    ("augment=switch augment.mixup_alpha=nan", "augment.mixup_alpha must be a finite number (got nan)"),
    ("optim.lr=inf", "optim.lr must be a finite number (got inf)"),
    ("seed=4294967296", "seed must be < 2**32 (NumPy's seeds are 32-bit) (got 4294967296)"),
    ("seed=1180591620717411303424", "seed must be < 2**32"),
    ("trainer.device=cuda:x", "trainer.device must be auto, cpu, cuda or cuda:N (N = 0, 1, ...) (got 'cuda:x')"),
    ("trainer.device=cuda:-1", "trainer.device must be auto, cpu, cuda or cuda:N"),
])
def test_config_errors_are_one_line_and_exit_2(override, message, capsys, tmp_path):
    code = main(["train", *override.split(), f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("mixtrain: error: ") and err.count("\n") == 1, err
    assert message in err
    assert not (tmp_path / "run").exists()  # stopped before any work


def test_bad_sweep_value_stops_the_whole_sweep_before_it_starts(capsys, tmp_path):
    code = main(["train", "-m", "optim.lr=0.1,-1", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    assert code == 2 and "optim.lr must be > 0 (got -1.0)" in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()


def test_unknown_command_and_usage(capsys):
    assert main(["fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "mixtrain train" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["report", "shards"])
def test_plain_commands_print_their_usage_and_name_a_bad_flag(command, capsys):
    for flag in ("-h", "--help"):
        assert main([command, flag]) == 0
        assert capsys.readouterr().out.startswith(f"usage: mixtrain {command} ")
    assert main([command, "--frobnicate"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mixtrain: error: unrecognized arguments: --frobnicate (usage: mixtrain ") and "\n" not in err


def test_subprocess_error_has_no_traceback(tmp_path):
    result = run_cli("train", "trainer.batch_size=0", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "mixtrain: error: trainer.batch_size must be >= 1 (got 0)"
    assert "Traceback" not in result.stdout + result.stderr


def test_runtime_input_error_exits_2_without_traceback(tmp_path):
    result = run_cli("train", "dataset=imagefolder", f"dataset.root={tmp_path / 'nothing'}", *TINY,
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_help_and_cfg_job(tmp_path):
    helped = run_cli("train", "--help", cwd=tmp_path)
    assert helped.returncode == 0
    for group in ("dataset", "model", "augment", "optim", "sched", "trainer"):
        assert f"{group}:" in helped.stdout
    # The groups a user chooses from, every option read from the registry; not the schema/* groups
    # the options start from (issue 36).
    from mixtrain.config.registry import option_names

    assert "schema/" not in helped.stdout
    assert f"\ndebug: {', '.join(option_names('debug'))}\n" in helped.stdout
    printed = run_cli("train", "--cfg", "job", "model=resnet56", "optim.lr=0.05", cwd=tmp_path)
    assert printed.returncode == 0
    assert "name: resnet56" in printed.stdout and "lr: 0.05" in printed.stdout


def test_help_lists_the_users_groups_once(tmp_path, monkeypatch, capsys):
    """OmegaConf resolves the help template twice; the listing of the groups a user chooses from (one
    config repository opened per group by Hydra) is made once."""
    from hydra._internal.hydra import Hydra

    listings, format_config_groups = [], Hydra.format_config_groups

    def counted(self, predicate, compact=True):
        listings.append(not predicate("schema/dataset") and not predicate("hydra/help"))  # the user's groups
        return format_config_groups(self, predicate, compact)

    monkeypatch.setattr(Hydra, "format_config_groups", counted)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["mixtrain", "train", "--help"])
    main(["train", "--help"])
    assert f"\ndebug: {', '.join(option_names('debug'))}\n" in capsys.readouterr().out
    assert listings.count(True) == 1


def test_default_dataset_runs_from_any_directory(tmp_path):
    # The bundled mini set: the offline default. Limited to a few steps here.
    result = run_cli("train", "trainer.epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                     "trainer.device=cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    runs = list((tmp_path / "outputs").glob("*/*/summary.json"))
    assert len(runs) == 1
    summary = json.loads(runs[0].read_text())
    assert summary["config"]["dataset"]["name"] == "cifar10_mini" and summary["num_classes"] == 10
    assert "val acc" in result.stdout and "val ECE" in result.stdout


def test_multirun_writes_one_run_dir_per_job(tmp_path):
    make_image_folder(tmp_path / "data", per_class=8, val_per_class=4, size=16)
    result = run_cli("train", "-m", "optim.lr=0.05,0.1", "dataset=imagefolder", f"dataset.root={tmp_path / 'data'}",
                     "dataset.cache=true", "dataset.image_size=16", *TINY, f"hydra.sweep.dir={tmp_path / 'sweep'}",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lrs = sorted(json.loads(p.read_text())["config"]["optim"]["lr"] for p in (tmp_path / "sweep").glob("*/summary.json"))
    assert lrs == [0.05, 0.1]


def test_sweep_jobs_follow_hydras_basic_sweeper_order():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from mixtrain.config.overrides import sweep_jobs

    parsed = OverridesParser.create().parse_overrides(["a=1,2", "b=x", "c=range(0,2)", "a=5,6", "d='p,q'"])
    # Keys in the order they first appear, a later override of a key replacing the earlier one,
    # the last key varying fastest: job numbers match the basic sweeper's job dirs.
    assert sweep_jobs(parsed) == [["a=5", "b=x", "c=0", "d='p,q'"], ["a=5", "b=x", "c=1", "d='p,q'"],
                                  ["a=6", "b=x", "c=0", "d='p,q'"], ["a=6", "b=x", "c=1", "d='p,q'"]]
