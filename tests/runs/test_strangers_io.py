"""Strangers' files, part B (issue 32): damaged run files, full disks, hangs and stops, messages that
mislead, and text that other tools would run. Each case here failed before its fix."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import functools
import http.server
import io
import json
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY, make_image_folder, position, slow_step_args, step_begun, wait_for_step
from hydra.experimental.callback import Callback
from PIL import Image, ImageOps

from mixtrain.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- damaged files of a finished run


# Class names a spreadsheet would read as formulas (OWASP's CSV injection): predict must write them as text.
FORMULA_CLASSES = ("-ant", "=bee", "@cat")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished run (1 epoch, calibrated last.pt) and its data, with :data:`FORMULA_CLASSES`; every
    damage case works on a copy."""
    root = tmp_path_factory.mktemp("finished")
    data = make_image_folder(root / "data", classes=FORMULA_CLASSES, per_class=8, val_per_class=3, size=16)
    run = root / "run"
    assert main(["train", "dataset=imagefolder", f"dataset.root={data}", "dataset.image_size=16", *TINY,
                 f"hydra.run.dir={run}"]) == 0
    assert main(["eval", f"checkpoint={run / 'last.pt'}", "calibrate=true", "fgsm_eps=[]", "bootstrap=0",
                 f"hydra.run.dir={root / 'ev'}"]) == 0
    assert (run / "last.calibration.json").is_file() and (run / "val_logits.pt").is_file()
    return root


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.unlink()
    if how == "dir":
        path.mkdir()
        return
    half = len(data) // 2
    path.write_bytes({"truncated": data[:half], "non_utf8": data[:half] + b"\xff\xfe" + data[half:],
                      "invalid_json": b'{"status": "completed", "epochs": [1,', "empty": b""}[how])


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else "dir" for p in sorted(folder.rglob("*"))}


def command(name: str, run: Path, out: Path, damaged: str) -> list:
    ckpt = run if damaged == "best.pt" else run / "last.pt"  # a run dir reads its best.pt
    images = run.parent / "data" / "val"
    return {"resume": ["train", f"resume={run}", "trainer.epochs=2"],
            "eval": ["eval", f"checkpoint={ckpt}", "fgsm_eps=[]", "bootstrap=0", f"hydra.run.dir={out / 'ev'}"],
            "calibrate": ["eval", f"checkpoint={ckpt}", "calibrate=true", "fgsm_eps=[]", "bootstrap=0",
                          f"hydra.run.dir={out / 'cal'}"],
            "compare": ["compare", str(ckpt), "fgsm_eps=[]", "bootstrap=0", "--out", str(out / "cmp")],
            "report": ["report", str(run), "--out", str(out / "rep")],
            "predict": ["predict", f"checkpoint={ckpt}", f"inputs={images}", f"out={out / 'p.csv'}", "num_workers=0"],
            "export": ["export", f"checkpoint={ckpt}", f"out={out / 'exp'}"]}[name]


# Which commands read each file of a run (the others never open it).
READERS = {"metrics.jsonl": ("resume", "report"), "summary.json": ("report",), ".hydra/config.yaml": ("report",),
           ".hydra/overrides.yaml": ("resume",), ".hydra/hydra.yaml": ("resume",),
           "last.calibration.json": ("predict", "export"),
           "last.pt": ("resume", "eval", "calibrate", "predict", "export"), "best.pt": ("eval", "compare"),
           "val_logits.pt": ("report",)}
# What a command that succeeds may write into the run dir itself.
WRITES_INTO_RUN = {"resume": None, "calibrate": {"last.calibration.json"}}  # None: the run's own writer
TEXT_DAMAGE, BINARY_DAMAGE = ("truncated", "non_utf8", "invalid_json", "empty", "dir"), ("truncated", "empty", "dir")
CASES = [(name, reader, how) for name, readers in READERS.items() for reader in readers
         for how in (BINARY_DAMAGE if name.endswith(".pt") else TEXT_DAMAGE)]


@pytest.mark.parametrize("name, reader, how", CASES)
def test_a_damaged_run_file_is_one_line_or_a_said_skip(finished, tmp_path, capsys, name, reader, how):
    run = tmp_path / "run"
    shutil.copytree(finished / "run", run)
    (tmp_path / "data").symlink_to(finished / "data")
    damage(run / name, how)
    before = snapshot(run)
    capsys.readouterr()
    code = main(command(reader, run, tmp_path / "out", name))  # a traceback escapes main and fails the test
    out, err = capsys.readouterr()
    assert "Traceback" not in err and code in (0, 2), (code, err)
    after = snapshot(run)
    if code == 2:
        (line,) = [line for line in err.splitlines() if line.startswith("mixtrain: error:")]
        assert Path(name).name in line, line  # the line names the damaged file
        assert after == before  # nothing changed
        return
    # Read anyway: the damaged file is said (skipped, set aside), never silently taken for data.
    assert Path(name).name in out + err, (out, err)
    allowed = WRITES_INTO_RUN.get(reader, set())
    if allowed is not None:
        assert {k: v for k, v in after.items() if k not in allowed} == \
            {k: v for k, v in before.items() if k not in allowed}
    elif after.get(name) != before[name]:  # the run's writer rewrote it: it only added lines, or kept the old beside
        old, new = before[name], after.get(name)
        added = isinstance(old, bytes) and isinstance(new, bytes) and new.startswith(old)
        assert added or old in after.values() or old == "dir", sorted(after)


# --------------------------------------------------------------------------- a full disk, a dir removed (defect 9)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """24 training images of 16 px: 3 steps of 8 an epoch."""
    return make_image_folder(tmp_path_factory.mktemp("small"), per_class=8, val_per_class=3, size=16)


def small_args(data, *extra):
    return ["dataset=imagefolder", f"dataset.root={data}", "dataset.image_size=16", *TINY, *extra]


def file_size_limit(limit: int):
    """``ulimit -f``, in the child (Python ignores SIGXFSZ: a write past the limit fails with EFBIG)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def run_limited(args, cwd, limit: int, command: str = "train") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "mixtrain", command, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, preexec_fn=file_size_limit(limit))


@contextlib.contextmanager
def small_filesystem(path: Path, size: str = "3m"):
    """A real tmpfs of ``size`` at ``path`` (root only: skipped elsewhere)."""
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def one_line(err: str) -> str:
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


class Hung(BaseException):
    """Raised by :func:`no_hang` (a BaseException: no ``except OSError`` of the code under test takes it)."""


@contextlib.contextmanager
def no_hang(seconds: int = 60):
    """Fail, rather than wait for ever, where the code under test used to block (open() on a FIFO, a
    stalled transfer): SIGALRM interrupts the blocking call."""
    def hung(*_):
        raise Hung(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def when(ready, action, timeout: float = 120.0) -> threading.Thread:
    """Run ``action()`` in a thread as soon as ``ready()`` holds (while this thread runs a command)."""
    def wait_then_act():
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)
        action()

    thread = threading.Thread(target=wait_then_act, daemon=True)
    thread.start()
    return thread


def test_a_file_size_limit_stops_the_run_in_one_line(small, tmp_path):
    run = tmp_path / "run"  # the first checkpoint (2.2 MB) is past a 1 MB limit
    result = run_limited(small_args(small, f"hydra.run.dir={run}"), tmp_path, 1 << 20)
    told = f"cannot write the checkpoint {run / 'last.pt'} (File too large): raise the file size limit (ulimit -f)"
    assert result.returncode == 1 and told in one_line(result.stderr), result.stderr
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"


def test_a_full_disk_stops_the_run_in_one_line(small, tmp_path, capsys):
    with small_filesystem(tmp_path / "disk") as disk:  # a real one: last.pt fits on 3 MB, best.pt does not
        run = disk / "run"
        assert main(["train", *small_args(small, f"hydra.run.dir={run}")]) == 1
        told = f"cannot write the checkpoint {run / 'best.pt'} (No space left on device): free space; continue"
        assert told in one_line(capsys.readouterr().err)
        assert json.loads((run / "summary.json").read_text())["status"] == "failed"
        assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


def test_a_run_dir_removed_mid_run_stops_in_one_line(small, tmp_path, capsys):
    run = tmp_path / "run"
    # Renamed away and then removed: gone at once (rmtree takes it file by file while the run writes).
    remover = when(lambda: (run / "last.pt").exists(),
                   lambda: (run.rename(tmp_path / "trash"), shutil.rmtree(tmp_path / "trash")))
    assert main(["train", *small_args(small, "trainer.epochs=200", f"hydra.run.dir={run}")]) == 1
    remover.join()
    assert f"the run dir {run} is gone" in one_line(capsys.readouterr().err)


# --------------------------------------------------------------------------- predict's files (defects 5, 10, 12, 14)


def predict(finished, *args):
    return main(["predict", f"checkpoint={finished / 'run' / 'last.pt'}", "num_workers=0", *args])


def inputs_with_a_broken_file(folder: Path, good: str = "good.png", bad: str = "bad.jpg") -> Path:
    folder.mkdir()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(folder / good)
    (folder / bad).write_text("not an image")
    return folder


def test_predict_never_replaces_or_deletes_an_error_list_it_was_not_told_to(finished, tmp_path, capsys):
    images = inputs_with_a_broken_file(tmp_path / "in")
    theirs = tmp_path / "p_errors.csv"
    theirs.write_text("someone's own file\n")
    for inputs in (images, images / "good.png"):  # a list to write (it would replace theirs), none (it would go)
        assert predict(finished, f"inputs={inputs}", f"out={tmp_path / 'p.csv'}") == 2
        assert f"{theirs} exists (predict lists unreadable inputs there)" in one_line(capsys.readouterr().err)
        assert theirs.read_text() == "someone's own file\n" and not (tmp_path / "p.csv").exists()
    assert predict(finished, f"inputs={images}", f"out={tmp_path / 'p.csv'}", "overwrite=true") == 0
    assert theirs.read_text().splitlines()[1].startswith(str(images / "bad.jpg"))


def test_predict_csv_cells_are_text_to_a_spreadsheet(finished, tmp_path):
    images = inputs_with_a_broken_file(tmp_path / "in", good="=HYPERLINK(1).png", bad="+bad.jpg")
    assert predict(finished, f"inputs={images}", f"out={tmp_path / 'p.csv'}", "topk=3") == 0
    rows = [row for path in ("p.csv", "p_errors.csv") for row in csv.reader(open(tmp_path / path))]
    cells = [cell for row in rows for cell in row]
    assert not [c for c in cells if c.startswith(("=", "+", "-", "@", "\t", "\r"))], cells
    assert sorted(rows[1][1::2]) == ["'-ant", "'=bee", "'@cat"]  # OWASP: a leading ' makes it text
    assert rows[1][0] == f"{images}/=HYPERLINK(1).png"  # an absolute path starts with /
    assert predict(finished, f"inputs={images}", f"out={tmp_path / 'q.jsonl'}", "topk=3") == 0
    assert sorted(json.loads((tmp_path / "q.jsonl").read_text())["classes"]) == sorted(FORMULA_CLASSES)  # JSON: as is


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_predict_inputs_that_are_neither_file_nor_folder_are_named(finished, tmp_path, capsys, kind):
    special = Path("/dev/zero") if kind == "device" else tmp_path / "x.jpg"
    if kind == "fifo":
        os.mkfifo(special)
    assert predict(finished, f"inputs={special}", f"out={tmp_path / 'p.csv'}") == 2
    told = "a FIFO (named pipe)" if kind == "fifo" else "a character device"
    assert f"inputs={special} is {told}, not a file or a folder" in one_line(capsys.readouterr().err)


def test_predict_of_a_list_naming_a_fifo_lists_it_as_unreadable(finished, tmp_path):
    images = inputs_with_a_broken_file(tmp_path / "in")
    os.mkfifo(images / "pipe.jpg")
    (tmp_path / "list.txt").write_text(f"{images / 'good.png'}\n{images / 'pipe.jpg'}\n")
    with no_hang():  # before: open() waited for a writer for ever
        assert predict(finished, f"inputs={tmp_path / 'list.txt'}", f"out={tmp_path / 'p.csv'}") == 0
    listed = list(csv.reader(open(tmp_path / "p_errors.csv")))
    assert listed[1][0] == str(images / "pipe.jpg") and "not a regular file" in listed[1][1]


# --------------------------------------------------------------------------- images (defects 10, 11, 14)


@pytest.mark.parametrize("cache", [False, True])
def test_a_fifo_named_like_an_image_is_skipped_not_waited_for(small, tmp_path, cache):
    data = tmp_path / "data"
    shutil.copytree(small, data)
    os.mkfifo(data / "train" / "ant" / "x.jpg")
    run = tmp_path / "run"
    with no_hang():  # before: open() waited for a writer for ever
        assert main(["train", *small_args(data, f"dataset.cache={str(cache).lower()}", f"hydra.run.dir={run}")]) == 0
    assert json.loads((run / "summary.json").read_text())["unreadable_images"] == 1
    assert "x.jpg" in (run / "train.log").read_text()


def test_an_empty_image_file_is_unreadable_when_cached(small, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(small, data)
    (data / "train" / "ant" / "empty.jpg").write_bytes(b"")
    run = tmp_path / "run"
    assert main(["train", *small_args(data, "dataset.cache=true", f"hydra.run.dir={run}")]) == 0
    assert json.loads((run / "summary.json").read_text())["unreadable_images"] == 1


def exif_rotated_jpeg(path: Path) -> Path:
    """64 wide, 32 high as stored, left half red and right half blue; EXIF orientation 6: shown 32 x 64,
    red on top."""
    pixels = np.zeros((32, 64, 3), dtype=np.uint8)
    pixels[:, :32] = (230, 20, 20)
    pixels[:, 32:] = (20, 20, 230)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, quality=95, exif=exif)
    return path


def test_exif_orientation_is_applied_on_every_path(tmp_path):
    from mixtrain.data.folder import decode_folder, open_image_folder
    from mixtrain.data.images import load_rgb

    path = exif_rotated_jpeg(tmp_path / "photo.jpg")
    upright = load_rgb(str(path))
    assert upright.size == (32, 64)
    with Image.open(path) as image:  # held to Pillow's own exif_transpose
        assert np.array_equal(np.asarray(upright), np.asarray(ImageOps.exif_transpose(image).convert("RGB")))
    for split in ("train", "val"):
        (tmp_path / "data" / split / "a").mkdir(parents=True)
        shutil.copy(path, tmp_path / "data" / split / "a" / "photo.jpg")
    images, _, _, _ = decode_folder(open_image_folder(str(tmp_path / "data"), "train", "dataset.train_split"), 16)
    top, bottom = images[0, :, :8].float().mean((1, 2)), images[0, :, 8:].float().mean((1, 2))
    assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0], (top, bottom)  # red on top, blue below


# --------------------------------------------------------------------------- shard sets (defects 6, 14)


def shard_set(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_failed_shards_overwrite_keeps_the_good_set_and_a_smaller_one_leaves_no_old_shards(small, tmp_path, capsys):
    out = tmp_path / "shards"
    assert main(["shards", str(small), str(out), "--per-shard", "5"]) == 0
    (out / "README.md").write_text("ours")  # not part of the set: it stays
    good = shard_set(out)
    bad = tmp_path / "bad"
    shutil.copytree(small, bad)
    shutil.copytree(bad / "val" / "cat", bad / "val" / "dog")  # val's classes differ: refused after train is written
    capsys.readouterr()
    assert main(["shards", str(bad), str(out), "--per-shard", "5", "--overwrite"]) == 2
    assert "the splits' class folders differ (val)" in one_line(capsys.readouterr().err)
    assert shard_set(out) == good and sorted(p.name for p in tmp_path.iterdir()) == ["bad", "shards"]
    assert main(["shards", str(small), str(out), "--per-shard", "100", "--overwrite"]) == 0
    assert sorted(shard_set(out)) == ["README.md", "_info.json", "classes.json", "train-000000.tar", "val-000000.tar"]
    assert json.loads((out / "_info.json").read_text())["splits"]["train"]["filenames"] == ["train-000000.tar"]
    assert (out / "README.md").read_text() == "ours" and oct(out.stat().st_mode & 0o777) != "0o700"


def test_the_printed_train_command_is_quoted_for_the_shell(small, tmp_path, capsys, monkeypatch):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    monkeypatch.chdir(tmp_path)
    assert main(["shards", str(small), "it's"]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    words = shlex.split(line.split("train with: ", 1)[1])  # as a shell reads it
    assert words[:3] == ["mixtrain", "train", "dataset=webdataset"]
    parsed = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(words[3:])}
    assert parsed == {"dataset.train_urls": "it's/train-{000000..000000}.tar",
                      "dataset.val_urls": "it's/val-{000000..000000}.tar"}  # as Hydra reads it


# --------------------------------------------------------------------------- shards read (defects 10, 11, 12)


@pytest.fixture(scope="module")
def shards(small, tmp_path_factory):
    """``small`` as shards of 5: train-000000..000004, val-000000..000001."""
    from mixtrain.data.shard_writer import write_shards

    out = tmp_path_factory.mktemp("shards") / "set"
    write_shards(small, out, ["train", "val"], per_shard=5)
    return out


def shard_args(base, *extra):
    return ["dataset=webdataset", f'dataset.train_urls="{base}/train-{{000000..000004}}.tar"',
            f'dataset.val_urls="{base}/val-{{000000..000001}}.tar"', "dataset.image_size=16", *TINY, *extra]


class ShardServer(http.server.SimpleHTTPRequestHandler):
    """Serves a shard set; ``stall`` sends half of train-000002.tar and then nothing; ``dies`` drops every
    connection for a train shard after the first ``limit``."""

    mode, served, limit = "", 0, 2

    def log_message(self, *args):
        pass

    def do_GET(self):
        if "/train-" in self.path:
            type(self).served += 1
            if self.mode == "dies" and type(self).served > self.limit:
                self.close_connection = True
                return  # no response at all: the server is gone
            if self.mode == "stall" and "train-000002" in self.path:
                data = Path(self.directory, self.path.lstrip("/")).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[:len(data) // 2])
                self.wfile.flush()
                time.sleep(60)
                return
        super().do_GET()


@contextlib.contextmanager
def serving(folder: Path, mode: str, limit: int = 2):
    handler = type("Handler", (ShardServer,), {"mode": mode, "served": 0, "limit": limit})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_stalled_shard_server_fails_the_read_after_the_timeout(shards, tmp_path, capsys):
    with serving(shards, "stall") as url, no_hang():  # before: curl waited for ever
        assert main(["train", *shard_args(url, "dataset.read_timeout=2", f"hydra.run.dir={tmp_path / 'run'}")]) == 2
    told = f"the shard {url}/train-000002.tar sent nothing for 2 s (dataset.read_timeout)"
    assert told in one_line(capsys.readouterr().err)


@pytest.mark.parametrize("epoch", [0, 1])
def test_a_shard_server_that_dies_mid_epoch_is_named_without_disk_advice(shards, tmp_path, capsys, epoch):
    run = tmp_path / "run"
    with serving(shards, "dies", limit=5 * epoch + 2) as url:  # 5 train shards an epoch
        assert main(["train", *shard_args(url, "trainer.epochs=2", f"hydra.run.dir={run}")]) == 2
    err = one_line(capsys.readouterr().err)
    assert f"cannot read the shard {url}/train-" in err and "free space" not in err, err  # no disk involved
    assert ("resume=" in err) == (epoch == 1)  # the way on, only where a checkpoint is there to continue from
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"


def rewrite_shard(path: Path, change) -> None:
    """Rewrite a tar with ``change(name, data) -> [(name, data), ...]`` applied to each member."""
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            for new_name, new_data in change(name, data):
                info = tarfile.TarInfo(new_name)
                info.size = len(new_data)
                tar.addfile(info, io.BytesIO(new_data))


def test_a_class_index_out_of_range_is_a_counted_unreadable_sample(shards, tmp_path):
    broken = tmp_path / "set"
    shutil.copytree(shards, broken)
    changed = {}  # class written -> key of the sample it went to

    def first_class_to(value: bytes):
        def change(name, data):
            if name.endswith(".cls") and value not in changed:
                changed[value] = name.split(".")[0]
                return [(name, value)]
            return [(name, data)]
        return change

    rewrite_shard(broken / "train-000001.tar", first_class_to(b"7"))  # 3 classes: 0, 1, 2
    rewrite_shard(broken / "val-000000.tar", first_class_to(b"-1"))
    run = tmp_path / "run"
    assert main(["train", *shard_args(broken, f"hydra.run.dir={run}")]) == 0  # before: IndexError in training
    assert json.loads((run / "summary.json").read_text())["unreadable_images"] == 2  # val's -1 was dropped unsaid
    log = (run / "train.log").read_text()
    assert f"train-000001.tar:{changed[b'7']}" in log and f"val-000000.tar:{changed[b'-1']}" in log


@pytest.mark.parametrize("damage", ["truncated", "duplicated member"])
def test_a_damaged_shard_is_named_as_damaged(shards, tmp_path, capsys, damage):
    broken = tmp_path / "set"
    shutil.copytree(shards, broken)
    shard = broken / "train-000001.tar"
    if damage == "truncated":
        shard.write_bytes(shard.read_bytes()[:5000])
    else:
        rewrite_shard(shard, lambda n, d: [(n, d), (n, d)] if n.endswith(".png") and n.startswith("000000005") else
                      [(n, d)])
    assert main(["train", *shard_args(broken, "trainer.num_workers=2", f"hydra.run.dir={tmp_path / 'run'}")]) == 2
    err = one_line(capsys.readouterr().err)  # from a loader worker, still one line
    assert f"the shard {shard}" in err and "truncated or damaged" in err, err
    assert "_info.json (mixtrain shards), or drop it" not in err  # that would hide the damage


def test_an_hf_label_of_minus_one_is_a_counted_unreadable_sample(tmp_path):
    import datasets

    rng = np.random.default_rng(0)

    def split(labels):
        images = [Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in labels]
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
        return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)

    path = tmp_path / "ds"
    datasets.DatasetDict({"train": split([0, 1] * 8 + [-1]), "validation": split([0, 1, -1, 0])}).save_to_disk(path)
    run = tmp_path / "run"
    assert main(["train", "dataset=hf", f"dataset.path={path}", "dataset.image_size=16", *TINY,
                 f"hydra.run.dir={run}"]) == 0  # before: train crashed; val dropped its -1 unsaid
    assert json.loads((run / "summary.json").read_text())["unreadable_images"] == 2
    log = (run / "train.log").read_text()
    assert "[16]" in log and "[2]" in log  # the rows


# --------------------------------------------------------------------------- a stop within a step (defect 10)


def test_a_stop_is_honoured_after_the_step_in_progress(small, tmp_path, capsys, monkeypatch):
    """12 steps of 2 s and no sync point before the epoch's end: the stop must not wait for it (SLURM kills
    30 s after its SIGTERM)."""
    run, mark = tmp_path / "run", tmp_path / "step"
    args = small_args(small, *slow_step_args(tmp_path, 2, mark), "trainer.batch_size=2", "trainer.log_every=1000",
                      f"hydra.run.dir={run}")
    monkeypatch.syspath_prepend(str(tmp_path))  # the slow model's module
    sent = {}

    def stop():  # while the first step runs (its handler is set: the run is in its loop)
        sent["begun"], sent["at"] = step_begun(mark), time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)

    when(lambda: step_begun(mark) is not None, stop)
    assert main(["train", *args]) == 143
    took = time.monotonic() - sent["at"]
    epoch, step = position(run)
    assert epoch == 0 and step in (sent["begun"], sent["begun"] + 1), (step, sent)  # after that step (or the next)
    assert f"stopped by SIGTERM at epoch 0, step {step}; checkpoint {run / 'last.pt'}" in one_line(capsys.readouterr().err)
    assert took < 2 + 2, took  # that step (2 s) and the checkpoint; before: the epoch's end, ~20 s later


def test_under_torchrun_every_rank_stops_at_the_same_step(small, tmp_path):
    run, mark = tmp_path / "run", tmp_path / "step"
    args = small_args(small, *slow_step_args(tmp_path, 2, mark), "trainer.batch_size=2", "trainer.log_every=1000",
                      f"hydra.run.dir={run}")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "mixtrain", "train", *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    begun = wait_for_step(mark, proc)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both ranks
    _, err = proc.communicate(timeout=120)
    took = time.monotonic() - sent
    epoch, step = position(run)
    assert epoch == 0 and begun <= step <= begun + 2, (step, begun, err)  # the ranks agree one step late
    assert len(torch.load(run / "last.pt", weights_only=True)["ranks"]) == 2  # both ranks' states: one step
    assert "mixtrain: stopped by SIGTERM at epoch 0" in err, err  # (torchrun prints its own traceback)
    assert took < 3 * 2 + 6, took


# --------------------------------------------------------------------------- checkpoints that carry the marker (defect 11)


MALFORMED = {"no config": lambda s: s.pop("config"),
             "epochs='abc'": lambda s: s["config"]["trainer"].update(epochs="abc"),
             "num_classes='three'": lambda s: s.update(num_classes="three"),
             "model=None": lambda s: s.update(model=None)}


@pytest.mark.parametrize("malformed", sorted(MALFORMED))
def test_a_malformed_checkpoint_with_the_marker_is_one_line_everywhere(finished, tmp_path, capsys, malformed):
    run = tmp_path / "run"
    shutil.copytree(finished / "run", run)
    state = torch.load(run / "last.pt", weights_only=True)
    MALFORMED[malformed](state)
    torch.save(state, run / "last.pt")
    before = snapshot(run)
    ckpt = f"checkpoint={run / 'last.pt'}"
    for argv in (["predict", ckpt, f"inputs={finished / 'data' / 'val'}", f"out={tmp_path / 'p.csv'}"],
                 ["export", ckpt, f"out={tmp_path / 'exp'}"],
                 ["eval", ckpt, "fgsm_eps=[]", f"hydra.run.dir={tmp_path / 'ev'}"],
                 ["train", f"resume={run}", "trainer.epochs=2"]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        assert f"{run / 'last.pt'} is a damaged mixtrain checkpoint (" in one_line(capsys.readouterr().err), argv
    assert snapshot(run) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # eval left no .hydra/


def test_a_loader_worker_killed_mid_run_is_one_line_with_the_way_on(small, tmp_path, capsys, monkeypatch):
    import mixtrain.data.folder as folder

    run, armed = tmp_path / "run", tmp_path / "armed"
    real = folder.load_rgb

    def killed_when_armed(path):  # the kernel's OOM killer, in a loader worker, once the run has a checkpoint
        if armed.exists() and torch.utils.data.get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path)

    monkeypatch.setattr(folder, "load_rgb", killed_when_armed)
    when(lambda: (run / "last.pt").exists(), armed.touch)
    assert main(["train", *small_args(small, "trainer.num_workers=1", "trainer.epochs=50", f"hydra.run.dir={run}")]) == 1
    err = one_line(capsys.readouterr().err)
    assert "a data loader worker died (DataLoader worker (pid" in err and f"resume={run}" in err, err
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"


# --------------------------------------------------------------------------- paths and sizes the OS refuses (defect 11)


@contextlib.contextmanager
def file_size_limit_here(limit: int):
    """``ulimit -f`` on this process for a while (Python ignores SIGXFSZ: a longer write fails, EFBIG)."""
    previous = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, previous[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, previous)


def test_a_file_size_limit_in_predict_and_export_is_one_line(finished, tmp_path, capsys):
    ckpt = f"checkpoint={finished / 'run' / 'last.pt'}"
    with file_size_limit_here(1000):  # predictions of 33 images: 2 kB; the model: 1 MB
        assert predict(finished, f"inputs={finished / 'data'}", f"out={tmp_path / 'p.csv'}") == 2
        predict_err = capsys.readouterr().err
        assert main(["export", ckpt, f"out={tmp_path / 'exp'}"]) == 2
        export_err = capsys.readouterr().err
    assert f"cannot write {tmp_path / 'p.csv'} (File too large): the file size limit" in one_line(predict_err)
    assert f"cannot write {tmp_path / 'exp' / 'model.safetensors'} (File too large)" in one_line(export_err)
    assert not list(tmp_path.iterdir())  # no partial file, no temp file, no folder made for them


def test_paths_longer_than_the_os_takes_are_one_line(finished, small, tmp_path, capsys):
    long = tmp_path / ("x" * 300)  # one name over the 255 bytes a filesystem takes
    for argv in (["train", *small_args(small, f"hydra.run.dir={long / 'run'}")],
                 ["predict", f"checkpoint={finished / 'run' / 'last.pt'}", f"inputs={finished / 'data' / 'val'}",
                  f"out={long / 'p.csv'}"],
                 ["report", str(finished / "run"), "--out", str(long)]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        assert "(File name too long): the OS limits a name to 255 bytes" in one_line(capsys.readouterr().err), argv
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- messages that misled (defect 12)


def test_class_names_in_two_unicode_forms_show_their_code_points(tmp_path, capsys):
    make_image_folder(tmp_path / "data", classes=("café", "tea"), per_class=8, splits=("train",))
    make_image_folder(tmp_path / "data", classes=("cafe\u0301", "tea"), per_class=2, splits=("val",))
    assert main(["train", *small_args(tmp_path / "data", f"hydra.run.dir={tmp_path / 'run'}")]) == 2
    err = one_line(capsys.readouterr().err)
    assert "(only in train: ['caf\\xe9']; only in val: ['cafe\\u0301']): the same names in two Unicode forms" in err


PROBED: list = []  # what LockProbe saw


class LockProbe(Callback):
    """A Hydra callback: when job 1 of a sweep starts, may another process take job 0's dir?"""

    def on_job_start(self, config, **kwargs) -> None:
        if config.hydra.job.num == 1:
            fd = os.open(Path(config.hydra.sweep.dir) / "0", os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another open file: as another process would
                PROBED.append("free")
            except BlockingIOError:
                PROBED.append("locked")
            finally:
                os.close(fd)


def test_a_finished_sweep_job_is_free_before_the_sweep_ends(small, tmp_path):
    PROBED.clear()
    assert main(["train", "-m", *small_args(small, "optim.lr=0.1,0.2", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                                            f"+hydra.callbacks.probe._target_={__name__}.LockProbe")]) == 0
    assert PROBED == ["free"]  # before: locked until the whole sweep ended ("calibrate after it ends")
