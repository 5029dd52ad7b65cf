"""The built wheel carries conf/, recipes/ and the mini set, and runs outside the checkout."""

import json
import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(ROOT)], check=True, capture_output=True, text=True)
    (path,) = out.glob("mixtrain-*.whl")
    return path


def test_wheel_contains_configs_recipes_and_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "mixtrain/conf/train.yaml" in names
    assert "mixtrain/conf/dataset/cifar10_mini.yaml" in names
    assert {f"mixtrain/recipes/{p.name}" for p in (ROOT / "recipes").glob("*.yaml")} <= names
    assert "mixtrain/data/cifar10_mini.npz" in names
    assert not any(n.startswith(("tests/", "conf/", "outputs/")) for n in names)


def test_wheel_in_a_fresh_venv_runs_from_another_directory(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    # Dependencies (torch & co.) come from this environment's site-packages through a .pth
    # file; .pth files found there are not processed, so this checkout's editable install
    # does not leak in: mixtrain comes from the wheel alone.
    venv_site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                    check=True, capture_output=True, text=True).stdout.strip())
    (venv_site / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(py), "-c", "import mixtrain; print(mixtrain.__file__)"], cwd=work, env=env,
                           check=True, capture_output=True, text=True).stdout
    assert str(venv) in where and str(ROOT) not in where

    mixtrain = str(venv / "bin" / "mixtrain")
    shown = subprocess.run([mixtrain, "train", "--cfg", "job", "recipe=resnet20_cifar10"], cwd=work, env=env,
                           capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "decay_milestones:" in shown.stdout and "name: resnet20" in shown.stdout

    run = subprocess.run([mixtrain, "train", "trainer.epochs=1", "trainer.limit_train_batches=2",
                          "trainer.limit_val_batches=1", "trainer.device=cpu"], cwd=work, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    (summary,) = (work / "outputs").glob("*/*/summary.json")
    assert json.loads(summary.read_text())["config"]["dataset"]["name"] == "cifar10_mini"
