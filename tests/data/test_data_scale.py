"""Data at scale (issue 28): WebDataset shards (local and over HTTP) and Hugging Face datasets from disk,
through the one split factory, with exact resume, bad samples counted, and missing extras named."""

import functools
import http.server
import io
import json
import signal
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SLOW, TINY, make_image_folder, position, run_cli, start, wait_until_inside
from PIL import Image

from mixtrain.artifacts import checkpoint
from mixtrain.cli import main
from mixtrain.data import LoaderOptions, WebDatasetConfig, open_split
from mixtrain.data.shard_writer import write_shards
from mixtrain.data.shard_reading import shard_members
from mixtrain.data.shards import ShardStream, open_shards

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A folder of 3 classes (40 train, 4 val images each) and its shards of 7 samples."""
    root = tmp_path_factory.mktemp("scale")
    make_image_folder(root / "data", per_class=40, val_per_class=4, size=16, ext="jpg")
    write_shards(root / "data", root / "shards", ["train", "val"], per_shard=7)
    return root


def shard_args(root, base=None):
    base = base or str(root / "shards")
    return ["dataset=webdataset", f'dataset.train_urls="{base}/train-{{000000..000017}}.tar"',
            f'dataset.val_urls="{base}/val-{{000000..000001}}.tar"', "dataset.image_size=16"]


def write_ids(path: Path, ids, size: int = 8) -> None:
    """A shard whose samples' class is their id (to count every sample)."""
    with tarfile.open(path, "w") as tar:
        for i in ids:
            image = io.BytesIO()
            Image.new("RGB", (size, size), (i % 255, 0, 0)).save(image, format="PNG")
            for ext, data in (("png", image.getvalue()), ("cls", str(i).encode())):
                info = tarfile.TarInfo(f"{i:05d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def numbered(tmp_path_factory):
    """50 samples in 7 shards of uneven size, each labelled with its own id."""
    root = tmp_path_factory.mktemp("numbered")
    sizes, start = [9, 3, 11, 7, 5, 8, 7], 0
    for k, size in enumerate(sizes):
        write_ids(root / f"s-{k}.tar", range(start, start + size))
        start += size
    (root / "classes.json").write_text(json.dumps([f"c{i}" for i in range(start)]))
    return root, start


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("workers", [0, 1, 2, 3])
@pytest.mark.parametrize("train", [True, False])
def test_every_sample_once_an_epoch_over_ranks_and_workers(numbered, world, workers, train):
    root, total = numbered
    cfg = WebDatasetConfig(train_urls=f"{root}/s-{{0..6}}.tar", val_urls=f"{root}/s-{{0..6}}.tar", image_size=8)
    shards = open_shards(cfg, "train")
    seen = {}
    for epoch in (0, 1):
        ids = []
        for rank in range(world):
            stream = ShardStream(shards, lambda image: torch.zeros(1), train,
                                 LoaderOptions(4, num_workers=workers, seed=3, rank=rank, world_size=world))
            stream.epoch = epoch
            loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)
            ids += [int(label) for _, label, _ in loader]
            if train:  # a training loader's workers stop at their last full batch: a subset, each once
                stream.full_batches = True
                kept = [int(label) for _, label, _ in loader]
                assert len(kept) == len(set(kept)) == sum(stream.per_worker_batches(rank)) * 4
                assert set(kept) <= set(ids[-sum(shards.counts[s] for s in stream.rank_shards(rank)):])
        assert sorted(ids) == list(range(total))  # each exactly once
        seen[epoch] = ids
    assert (seen[0] != seen[1]) == train  # a new order each training epoch, the same one to evaluate


def test_a_loader_resumes_mid_epoch_where_it_stopped(numbered):
    root, _ = numbered
    cfg = WebDatasetConfig(train_urls=f"{root}/s-{{0..6}}.tar", val_urls=f"{root}/s-{{0..6}}.tar", image_size=8,
                           mean=[0, 0, 0], std=[1, 1, 1])
    options = LoaderOptions(3, num_workers=2, seed=1)
    loader = open_split(cfg, "train", True, options).loader
    loader.set_epoch(2)
    whole = [labels.tolist() for _, labels in loader]
    for start_step in (1, 4, len(whole) - 1):
        again = open_split(cfg, "train", True, options).loader
        again.set_epoch(2)
        assert [labels.tolist() for _, labels in again.iter_from(start_step)] == whole[start_step:]


def killed_and_resumed_equal_straight(args, tmp_path):
    """Train ``args`` straight; train them again, SIGKILL inside epoch 1, resume: the same final weights.
    Returns the resumed run's dir."""
    args = [*args, *SLOW, "trainer.epochs=2", "trainer.num_workers=2"]
    straight, run = tmp_path / "straight", tmp_path / "run"
    proc = start([*args, f"hydra.run.dir={straight}"], tmp_path)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    proc = start([*args, f"hydra.run.dir={run}"], tmp_path)
    wait_until_inside(run, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    epoch, step = position(run)
    assert epoch == 1 and step > 0
    assert run_cli("train", f"resume={run}", cwd=tmp_path).returncode == 0
    a, b = checkpoint.load(straight / "last.pt")["model"], checkpoint.load(run / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    return run


def test_training_on_shards_resumes_bit_identical_after_sigkill(shards, tmp_path):
    run = killed_and_resumed_equal_straight(shard_args(shards), tmp_path)
    changed = run_cli("train", f"resume={run}", "trainer.num_workers=1", "trainer.epochs=4", cwd=tmp_path)
    assert changed.returncode == 2 and "the training order depends on num_workers 2 -> 1" in changed.stderr


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_shards_over_http_train_as_the_local_ones(shards, tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(QuietHandler, directory=str(shards / "shards")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        fast = [*TINY, "trainer.epochs=1", "trainer.num_workers=2"]
        assert main(["train", *shard_args(shards, url), *fast, f"hydra.run.dir={tmp_path / 'http'}"]) == 0
        assert main(["train", *shard_args(shards), *fast, f"hydra.run.dir={tmp_path / 'local'}"]) == 0
    finally:
        server.shutdown()
    a, b = (checkpoint.load(tmp_path / d / "last.pt")["model"] for d in ("http", "local"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((tmp_path / "http" / "summary.json").read_text())
    assert summary["num_classes"] == 3 and summary["status"] == "completed"


def test_eval_predict_classes_and_preview_work_on_shards(shards, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *shard_args(shards), *TINY, f"hydra.run.dir={run}"]) == 0
    assert main(["eval", f"checkpoint={run}", "fgsm_eps=[]", "bootstrap=0", f"hydra.run.dir={tmp_path / 'ev'}"]) == 0
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["dataset"]["samples"] == 12
    from mixtrain import load_model

    assert load_model(run).classes == ["ant", "bee", "cat"]
    assert main(["preview", *shard_args(shards), *TINY, f"hydra.run.dir={tmp_path / 'p'}"]) == 0


def test_a_broken_sample_is_counted_named_and_left_out(shards, tmp_path):
    broken = tmp_path / "shards"
    broken.mkdir()
    for path in (shards / "shards").iterdir():
        broken.joinpath(path.name).write_bytes(path.read_bytes())
    with tarfile.open(shards / "shards" / "val-000000.tar") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(broken / "val-000000.tar", "w") as tar:
        for member, data in members:
            if member.name == members[0][0].name:
                data = b"not an image"
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    run = tmp_path / "run"
    assert main(["train", *shard_args(shards, str(broken)), *TINY, f"hydra.run.dir={run}"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["unreadable_images"] == 1
    key = members[0][0].name.split(".")[0]
    assert f"val-000000.tar:{key}" in (run / "train.log").read_text()  # named: the shard and the key


def test_the_writer_writes_the_same_bytes_from_the_same_input(shards, tmp_path):
    write_shards(shards / "data", tmp_path / "again", ["train", "val"], per_shard=7)
    for path in (shards / "shards").iterdir():
        assert (tmp_path / "again" / path.name).read_bytes() == path.read_bytes(), path.name
    assert main(["shards", str(shards / "data"), str(tmp_path / "again")]) == 2  # it holds shards: not replaced


def test_without_counts_the_shards_are_counted_once_and_the_run_says_so(shards, tmp_path):
    plain = tmp_path / "shards"
    plain.mkdir()
    for path in (shards / "shards").glob("*.tar"):
        plain.joinpath(path.name).write_bytes(path.read_bytes())
    plain.joinpath("classes.json").write_text(json.dumps(["ant", "bee", "cat"]))
    run = tmp_path / "run"
    assert main(["train", *shard_args(shards, str(plain)), *TINY, f"hydra.run.dir={run}"]) == 0
    assert "counted the samples of 18 train shard(s) once" in (run / "train.log").read_text()


def test_a_missing_extra_is_one_line_naming_it(shards, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "webdataset", None)  # as if not installed
    assert main(["train", *shard_args(shards), *TINY, f"hydra.run.dir={tmp_path / 'r'}"]) == 2
    assert 'needs the webdataset package: pip install "mixtrain[wds]"' in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "datasets", None)
    assert main(["train", "dataset=hf", f"dataset.path={tmp_path}", *TINY, f"hydra.run.dir={tmp_path / 'h'}"]) == 2
    assert 'needs the datasets package: pip install "mixtrain[hf]"' in capsys.readouterr().err


# --------------------------------------------------------------------------- Hugging Face datasets


@pytest.fixture(scope="module")
def hf_dataset(tmp_path_factory):
    import datasets

    rng = np.random.default_rng(0)
    colors = [(220, 30, 30), (30, 200, 40), (40, 60, 230)]

    def split(n):
        labels = [i % 3 for i in range(n)]
        images = [Image.fromarray(np.clip(np.array(colors[y]) + rng.normal(0, 40, (16, 16, 3)), 0, 255)
                                  .astype(np.uint8)) for y in labels]
        features = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=["red", "green", "blue"])})
        return datasets.Dataset.from_dict({"img": images, "y": labels}, features=features)

    path = tmp_path_factory.mktemp("hf") / "ds"
    datasets.DatasetDict({"train": split(120), "validation": split(12)}).save_to_disk(str(path))
    return path


def hf_args(path):
    return ["dataset=hf", f"dataset.path={path}", "dataset.image_column=img", "dataset.label_column=y",
            "dataset.image_size=16"]


def test_an_hf_dataset_trains_evaluates_and_resumes_exactly(hf_dataset, tmp_path):
    run = killed_and_resumed_equal_straight(hf_args(hf_dataset), tmp_path)
    assert checkpoint.load(run / "last.pt")["classes"] == ["red", "green", "blue"]
    assert main(["eval", f"checkpoint={run}", "fgsm_eps=[]", "bootstrap=0", f"hydra.run.dir={tmp_path / 'ev'}"]) == 0
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["dataset"]["samples"] == 12


def test_an_hf_dataset_with_a_broken_image_and_from_parquet(hf_dataset, tmp_path):
    import datasets

    loaded = datasets.load_from_disk(str(hf_dataset))
    files = {}
    for name in ("train", "validation"):
        part = loaded[name].cast_column("img", datasets.Image(decode=False))
        if name == "train":
            part = part.map(lambda row, i: {"img": {"bytes": b"broken", "path": None}} if i == 5 else row,
                            with_indices=True)
        files[name] = str(tmp_path / f"{name}.parquet")
        part.to_parquet(files[name])
    run = tmp_path / "run"
    assert main(["train", "dataset=hf", f"dataset.train_files={files['train']}",
                 f"dataset.val_files={files['validation']}", "dataset.image_column=img", "dataset.label_column=y",
                 "dataset.image_size=16", *TINY, f"hydra.run.dir={run}"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["unreadable_images"] == 1
    assert "train[5]" in (run / "train.log").read_text()  # named: the split and the row
    assert checkpoint.load(run / "last.pt")["classes"] == ["red", "green", "blue"]


@pytest.mark.parametrize("args, message", [
    (["dataset=hf"], "dataset.path or dataset.train_files: give one"),
    (["dataset=hf", "dataset.train_files=t.parquet"], "dataset.val_files is required with dataset.train_files"),
    (["dataset=hf", "dataset.path=/nowhere"], "cannot load the dataset /nowhere"),
])
def test_hf_bad_input_is_one_line(args, message, tmp_path, capsys):
    assert main(["train", *args, *TINY, f"hydra.run.dir={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("form", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize("long_name", [False, True])
def test_shard_members_equal_webdatasets_reader_for_every_tar_format(form, long_name, tmp_path):
    import webdataset

    names = ["p" * 80 + "/k1" + "x" * 60 + ".jpg" if long_name else "a/k1.jpg", "p" * 80 + "/k1" + "x" * 60 + ".cls" if long_name else "a/k1.cls", "k2.JPG", "k2.cls", "__meta__",
             "__skip__/x.txt", "d/__kept__.txt", "noext", ".hidden.txt"]
    path = tmp_path / "s.tar"
    with tarfile.open(path, "w", format=form) as tar:
        tar.addfile(_dir_info("adir"))
        for k, name in enumerate(names):
            info, payload = tarfile.TarInfo(name), bytes([k]) * (k * 300 + 1)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    theirs = [{k: v for k, v in sample.items() if k != "__local_path__"}
              for sample in webdataset.WebDataset(str(path), shardshuffle=False, empty_check=False)]
    ours = shard_members(str(path))
    assert [sorted(s) for s in ours] == [sorted(s) for s in theirs] and len(ours) >= 3
    assert all(a[k] == b[k] for a, b in zip(ours, theirs) for k in a)


def _dir_info(name):
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


def test_brace_urls_without_quotes_get_the_quoting_fix(tmp_path, capsys):
    assert main(["train", "dataset=webdataset", "dataset.train_urls=s/t-{0..1}.tar", "dataset.val_urls=v.tar",
                 f"hydra.run.dir={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err
    assert err.endswith("quote a value with braces or commas inside the override: "
                        "'dataset.train_urls=\"s/t-{0..1}.tar\"'\n") and err.count("\n") == 1, err
