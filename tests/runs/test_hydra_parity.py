"""Hydra, whole: each command line runs against a plain ``@hydra.main`` app on mixtrain's configs and
against ``mixtrain train``; both must end the same way (the same config reaches the task, the same
jobs run, or both refuse). A Hydra release that changes behaviour fails one row, not a user.

The plain app is 10 lines below; it drops mixtrain's own callback (``~hydra.callbacks.mixtrain``),
so it is pure Hydra. mixtrain's training is replaced by a recorder (these rows are about the
front end; real runs are tested elsewhere)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

import hydra
import pytest
from helpers import EVENTS, REPO
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

import mixtrain.cli as cli
import mixtrain.train.training as training
from mixtrain.config import config_dir
from mixtrain.options import register_configs

EXAMPLE = REPO / "examples" / "my_configs"  # the README's worked example
# Test-only callbacks that record the order Hydra calls them in.
RECORDERS = {
    "hydra/callbacks/order.yaml": "first:\n  _target_: helpers.Recorder\n  name: first\n"
                                  "second:\n  _target_: helpers.Recorder\n  name: second\n",
    "hydra/callbacks/raising.yaml": "raising:\n  _target_: helpers.Recorder\n  name: raising\n  raise_on: on_job_end\n",
}


@pytest.fixture(scope="module")
def myconf(tmp_path_factory):
    root = tmp_path_factory.mktemp("user") / "my_configs"
    shutil.copytree(EXAMPLE, root)
    for name, text in RECORDERS.items():
        (root / name).write_text(text)
    return root


@dataclass
class Outcome:
    code: object  # 0, an exit code, or the name of an exception
    jobs: List[dict] = field(default_factory=list)  # what each job's task received
    out: str = ""

    @property
    def ok(self) -> bool:
        return self.code == 0


def received(cfg) -> dict:
    hc = HydraConfig.get()
    return {"config": OmegaConf.to_container(cfg, resolve=True), "config_name": hc.job.config_name,
            "num": OmegaConf.select(hc, "job.num"), "chdir": os.getcwd() == hc.runtime.output_dir,
            "hydra_files": (Path(hc.runtime.output_dir) / ".hydra").is_dir()}


def plain_app(args: List[str], jobs: bool = True) -> Outcome:
    """A 20-line @hydra.main app on mixtrain's conf/, the reference."""
    register_configs()
    seen = []

    @hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")
    def app(cfg):
        seen.append(received(cfg))

    return call(app, ["app", *args, *(["~hydra.callbacks.mixtrain"] if jobs else [])], seen)


def mixtrain(args: List[str], monkeypatch) -> Outcome:
    seen = []
    real = cli.to_object
    monkeypatch.setattr(cli, "to_object", lambda cfg: seen.append(received(cfg)) or real(cfg))
    monkeypatch.setattr(training, "fit", lambda cfg, run_dir, monitor=None, options=None: {"status": "completed",
                                                                                       "best_val_acc1": 50.0})
    return call(lambda: sys.exit(cli.main(["train", *args])), None, seen)


def call(function, argv, seen) -> Outcome:
    saved_argv, saved_cwd, out = sys.argv, os.getcwd(), io.StringIO()
    if argv is not None:
        sys.argv = argv
    try:
        with redirect_stdout(out):
            function()
        code = 0
    except SystemExit as ex:
        code = ex.code if isinstance(ex.code, int) else (0 if ex.code is None else 1)
    except Exception as ex:  # the plain app lets some of Hydra's refusals escape
        code = type(ex).__name__
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
    return Outcome(code, seen, out.getvalue())


# The command lines of issue 21, and the ones that already worked. {cd}: the user's config dir;
# {out}: a run or sweep dir of each side's own. kind: "run" compares what the task received,
# "refused" expects both to refuse, "out" compares what Hydra printed.
ROWS = [
    ("-cn picks the user's primary config", ["-cd", "{cd}", "-cn", "my_train", "hydra.run.dir={out}"], "run"),
    ("a user's augment option", ["-cd", "{cd}", "augment=my_mix", "hydra.run.dir={out}"], "run"),
    ("a user's recipe", ["-cd", "{cd}", "recipe=my_recipe", "hydra.run.dir={out}"], "run"),
    ("a user's experiment", ["-cd", "{cd}", "+experiment=lr_low", "hydra.run.dir={out}"], "run"),
    ("a user's callback group", ["-cd", "{cd}", "hydra/callbacks=log_return", "hydra.run.dir={out}"], "run"),
    ("${hydra:runtime.cwd} in a path", ["dataset=imagefolder", "dataset.root=${hydra:runtime.cwd}/data",
                                        "hydra.run.dir={out}"], "run"),
    ("${hydra:...} in a sweep", ["-m", "dataset=imagefolder", "dataset.root=${hydra:runtime.cwd}/data",
                                 "seed=0,1", "hydra.sweep.dir={out}"], "run"),
    ("hydra.mode=MULTIRUN", ["hydra.mode=MULTIRUN", "optim.lr=0.05,0.1", "hydra.sweep.dir={out}"], "run"),
    ("a sweep", ["-m", "optim.lr=0.05,0.1", "seed=0,1", "hydra.sweep.dir={out}"], "run"),
    ("a glob over a user's group", ["-m", "-cd", "{cd}", "augment=glob(m*)", "hydra.sweep.dir={out}"], "run"),
    ("hydra.sweeper.params in a config", ["-m", "-cd", "{cd}", "-cn", "my_sweep", "hydra.sweep.dir={out}"], "run"),
    ("hydra.job.chdir=true", ["hydra.job.chdir=true", "hydra.run.dir={out}"], "run"),
    ("hydra.output_subdir=null", ["hydra.output_subdir=null", "hydra.run.dir={out}"], "run"),
    ("a forgotten -m", ["optim.lr=0.05,0.1", "hydra.run.dir={out}"], "refused"),
    ("--resolve alone", ["--resolve", "hydra.run.dir={out}"], "refused"),
    ("an option that exists nowhere", ["-cd", "{cd}", "augment=nope", "hydra.run.dir={out}"], "refused"),
    ("overrides after a flag", ["-m", "seed=1", "-cd", "{cd}", "seed=2"], "refused"),
    ("--cfg job with a user's config", ["-cd", "{cd}", "-cn", "my_train", "--cfg", "job"], "out"),
    ("--cfg job --resolve", ["--cfg", "job", "--resolve", "model=resnet56"], "out"),
    ("-p one package", ["--cfg", "job", "-p", "trainer"], "out"),
    ("--info searchpath", ["-cd", "{cd}", "--info", "searchpath"], "out"),
    ("--info defaults", ["-cd", "{cd}", "-cn", "my_train", "--info", "defaults"], "out"),
    ("--version", ["--version"], "out"),
]


@pytest.mark.parametrize("name,args,kind", ROWS, ids=[row[0] for row in ROWS])
def test_mixtrain_ends_as_a_plain_hydra_app(name, args, kind, myconf, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def filled(side):
        return [a.replace("{cd}", str(myconf)).replace("{out}", str(tmp_path / side)) for a in args]

    plain = plain_app(filled("plain"), jobs=kind != "out")
    ours = mixtrain(filled("ours"), monkeypatch)
    if kind == "refused":
        assert not plain.ok and not ours.ok, (plain, ours)
        assert ours.code == 2 and not (tmp_path / "ours").exists()
        return
    if kind == "out":
        assert plain.ok and ours.ok, (plain, ours)
        assert ours.out.replace(str(tmp_path / "ours"), "OUT") == plain.out.replace(str(tmp_path / "plain"), "OUT")
        return
    assert plain.ok and ours.ok, (plain.code, ours.code)
    assert len(ours.jobs) == len(plain.jobs) > 0
    for mine, theirs in zip(ours.jobs, plain.jobs):
        assert mine == theirs


def test_the_user_primary_config_is_what_trains_and_what_hydra_records(myconf, tmp_path, monkeypatch):
    # Issue 21, defect 1: -cn was honoured by --cfg job but not by the run.
    run = tmp_path / "run"
    ours = mixtrain(["-cd", str(myconf), "-cn", "my_train", f"hydra.run.dir={run}"], monkeypatch)
    assert ours.ok and ours.jobs[0]["config"]["seed"] == 7 and ours.jobs[0]["config"]["augment"]["alpha"] == 0.3
    assert ours.jobs[0]["config"]["augment"]["mode"] == "elem"
    saved = OmegaConf.load(run / ".hydra" / "hydra.yaml").hydra
    assert saved.job.config_name == "my_train"
    assert str(myconf) in [s.path for s in saved.runtime.config_sources if s.provider == "command-line"]


def test_callbacks_run_in_hydras_order_and_a_failing_end_hook_only_warns(myconf, tmp_path, monkeypatch):
    EVENTS.clear()
    plain = plain_app(["-cd", str(myconf), "hydra/callbacks=order", f"hydra.run.dir={tmp_path / 'p'}"])
    theirs = list(EVENTS)
    EVENTS.clear()
    ours = mixtrain(["-cd", str(myconf), "hydra/callbacks=order", f"hydra.run.dir={tmp_path / 'o'}"], monkeypatch)
    assert plain.ok and ours.ok and EVENTS == theirs
    assert theirs == ["first.on_run_start", "second.on_run_start", "first.on_job_start", "second.on_job_start",
                      "second.on_job_end", "first.on_job_end", "second.on_run_end", "first.on_run_end"]
    with pytest.warns(UserWarning, match="Recorder.on_job_end raised RuntimeError"):
        ours = mixtrain(["-cd", str(myconf), "hydra/callbacks=raising", f"hydra.run.dir={tmp_path / 'r'}"], monkeypatch)
    assert ours.ok and (tmp_path / "r" / ".hydra").is_dir()


def test_experimental_rerun_reruns_the_pickled_job(tmp_path, monkeypatch):
    save = "+hydra.callbacks.save_job_info._target_=hydra.experimental.callbacks.PickleJobInfoCallback"
    first = mixtrain(["seed=5", save, f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch)
    pickled = tmp_path / "run" / ".hydra" / "config.pickle"
    assert first.ok and pickled.is_file()
    plain = plain_app(["--experimental-rerun", str(pickled)], jobs=False)
    again = mixtrain(["--experimental-rerun", str(pickled)], monkeypatch)
    assert plain.ok and again.ok and again.jobs[0]["config"] == plain.jobs[0]["config"]
    assert again.jobs[0]["config"]["seed"] == 5


def test_version_names_mixtrain_and_what_it_runs_on(capsys):
    assert cli.main(["--version"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("mixtrain 0.") and "hydra-core 1." in line and "torch 2." in line and "timm 1." in line


def test_a_forgotten_multirun_keeps_hydras_hint_in_one_line(capsys, tmp_path):
    assert cli.main(["train", "optim.lr=0.05,0.1", f"hydra.run.dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Ambiguous value for argument 'optim.lr=0.05,0.1'" in err
    assert "add --multirun to your command line" in err


def test_an_optuna_sweep_checks_its_fixed_part_once(monkeypatch, capsys, tmp_path):
    # Issue 21, defect 9: 4 choice() of 3 values are 81 jobs for the basic sweeper, n_trials for Optuna.
    import mixtrain.runs.launch as launch

    checked = []
    real = launch.to_object
    monkeypatch.setattr(launch, "to_object", lambda cfg: checked.append(1) or real(cfg))
    monkeypatch.setattr(launch, "claim_dir", lambda path: False)  # refuse the sweep dir: no trial runs
    sweep = ["-m", "hydra/sweeper=optuna", *(f"{key}=choice(1,2,3)" for key in
                                             ("seed", "trainer.epochs", "trainer.log_every", "trainer.eval_every")),
             f"hydra.sweep.dir={tmp_path / 's'}"]
    assert cli.main(["train", *sweep]) == 2 and "another mixtrain sweep" in capsys.readouterr().err
    assert len(checked) == 1
    checked.clear()
    basic = [a.replace("choice(1,2,3)", "1,2,3") for a in sweep if a != "hydra/sweeper=optuna"]
    assert cli.main(["train", *basic]) == 2 and len(checked) == 81


def test_a_strict_schema_says_why_a_new_key_is_refused(capsys, tmp_path):
    assert cli.main(["train", "+trainer.foo=1", f"hydra.run.dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown config key 'trainer.foo'" in err and "trainer has:" in err
    assert "the schemas are strict, so `+key=` cannot add a key" in err


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("mixtrain") is None,
                    reason="needs bash and the installed mixtrain script")
def test_shell_completion_installs_for_mixtrain_and_completes_each_command(tmp_path):
    script = subprocess.run(["mixtrain", "train", "-sc", "install=bash"], capture_output=True, text=True, cwd=tmp_path)
    assert script.returncode == 0 and script.stdout.rstrip().endswith("-F hydra_bash_completion mixtrain")

    def complete(line: str) -> List[str]:
        words = line.split(" ")
        shell = (f"{script.stdout}\nCOMP_LINE={json.dumps(line)}; COMP_POINT={len(line)}; "
                 f"COMP_CWORD={len(words) - 1}; hydra_bash_completion; echo \"${{COMPREPLY[@]}}\"")
        done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert complete("mixtrain tr") == ["train"]
    assert "augment=cutmix" in complete("mixtrain train augment=")
    from dataclasses import fields

    from mixtrain.config import OptimConfig

    assert set(complete("mixtrain train optim.l")) == {f"optim.{f.name}=" for f in fields(OptimConfig)
                                                       if f.name.startswith("l")}  # the schema's keys
    assert "dataset=cifar10_mini" in complete("mixtrain preview dataset=")


def test_a_run_composes_its_config_as_often_as_a_plain_app(tmp_path, monkeypatch):
    # ConfigLoaderImpl is Hydra's private loader: the package never touches it; this test counts on it.
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    calls = []
    real = ConfigLoaderImpl.load_configuration
    monkeypatch.setattr(ConfigLoaderImpl, "load_configuration", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    assert plain_app([f"hydra.run.dir={tmp_path / 'p'}"]).ok
    theirs, calls[:] = len(calls), []
    assert mixtrain([f"hydra.run.dir={tmp_path / 'o'}"], monkeypatch).ok
    assert len(calls) == theirs


def test_a_run_from_a_users_config_dir_trains_and_resumes_with_its_config_dir(tmp_path):
    # The README's worked example, for real (tiny): -cn is the run's, so resume=RUN needs only -cd (a config
    # dir may name code: mixtrain takes it from the command line, never from a run dir, issue 32).
    from helpers import TINY, run_cli

    run = tmp_path / "run"
    tiny = [*TINY, "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]
    done = run_cli("train", "-cd", str(EXAMPLE), "-cn", "my_train", *tiny, f"hydra.run.dir={run}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["config"]["seed"] == 7 and summary["config"]["augment"]["alpha"] == 0.3
    resumed = run_cli("train", "-cd", str(EXAMPLE), f"resume={run}", "trainer.epochs=2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert [r["epoch"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [0, 1]
