"""cascadepsp.training.runfiles and atomic.open_atomic: the checkpoint and log files both trainers share."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import torch

from cascadepsp.io import atomic
from cascadepsp.training import runfiles


def test_checkpoint_round_trip_and_a_corrupt_file_names_itself(tmp_path):
    path = runfiles.save_checkpoint({"step": 3, "w": torch.ones(2)}, tmp_path / runfiles.CHECKPOINT_NAME)
    assert runfiles.load_checkpoint(path)["step"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt_last.pt"]  # no temporary file left
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="ckpt_last.pt: not a readable checkpoint") as e:
        runfiles.load_checkpoint(path)
    assert "\n" not in str(e.value)


def test_csv_log_keeps_the_header_of_an_existing_file(tmp_path):
    log = runfiles.CsvLog(tmp_path / "log.csv", ["step", "loss", "val"])
    log.write({"step": 1, "loss": 0.123456789, "other": 5})
    again = runfiles.CsvLog(tmp_path / "log.csv", ["step", "loss"])  # a resumed run with fewer columns
    again.write({"step": 2, "val": 0.5})
    assert runfiles.read_log(tmp_path / "log.csv") == [{"step": "1", "loss": "0.123457", "val": ""},
                                                      {"step": "2", "loss": "", "val": "0.5"}]


def test_open_atomic_leaves_the_old_file_when_the_block_fails(tmp_path):
    target = tmp_path / "model"
    atomic.write_atomic(target, b"old")
    with pytest.raises(RuntimeError), atomic.open_atomic(target) as f:
        f.write(b"half")
        raise RuntimeError("checksum")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["model"]


def test_check_resume_refuses_data_order_changes_and_warns_on_the_rest():
    saved = {"seed": 0, "lr": 0.1, "augment": {"crop_size": 224}}
    runfiles.check_resume(saved, dict(saved), ["seed", "crop_size"], ["lr"])
    with pytest.raises(ValueError, match="crop_size=224 but the config says 320"):
        runfiles.check_resume(saved, {**saved, "augment": {"crop_size": 320}}, ["seed", "crop_size"], ["lr"])
    with pytest.warns(UserWarning, match="lr changed from 0.1 to 0.2"):
        runfiles.check_resume(saved, {**saved, "lr": 0.2}, ["seed", "crop_size"], ["lr"])


def test_stop_signals_interrupt_turns_kill_into_ctrl_c_and_restores_handlers():
    before = {sig: signal.getsignal(sig) for sig in runfiles.STOP_SIGNALS}
    for sig in runfiles.STOP_SIGNALS:
        with pytest.raises(KeyboardInterrupt, match=signal.Signals(sig).name):
            with runfiles.stop_signals_interrupt():
                os.kill(os.getpid(), sig)
                time.sleep(1)  # the handler runs at the next bytecode boundary; never reached
        assert {s: signal.getsignal(s) for s in runfiles.STOP_SIGNALS} == before
    seen = []

    def off_main_thread():
        with runfiles.stop_signals_interrupt():  # signal handlers can only be set on the main thread
            seen.append(signal.getsignal(signal.SIGTERM))

    worker = threading.Thread(target=off_main_thread)
    worker.start()
    worker.join()
    assert seen == [before[signal.SIGTERM]]


KILLED_WRITER = """
import os, sys, time
import torch
from cascadepsp.training import runfiles
path, marker = sys.argv[1], sys.argv[2]
runfiles.save_checkpoint({"step": 1, "w": torch.ones(4)}, path)
real_fsync = os.fsync
def stall(fd):  # the new checkpoint's bytes are in its temporary file, not yet renamed over the old one
    real_fsync(fd)
    open(marker, "w").close()
    time.sleep(60)
os.fsync = stall
runfiles.save_checkpoint({"step": 2, "w": torch.zeros(1_000_000)}, path)
"""


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path):
    import subprocess
    import sys

    path, marker = tmp_path / runfiles.CHECKPOINT_NAME, tmp_path / "writing"
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path), str(marker)])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None and time.monotonic() < deadline, "the writer never reached the write"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)  # no handler, no clean-up: mid-write
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
    state = runfiles.load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(4))  # the previous checkpoint, whole
    leftovers = [p for p in tmp_path.iterdir() if p.name not in (path.name, marker.name)]
    assert leftovers and all(atomic.is_temp_file(p) for p in leftovers)  # the half write stayed aside
    assert sorted(atomic.remove_stale_temps(tmp_path)) == sorted(leftovers)  # and a later run removes it
    assert runfiles.load_checkpoint(path)["step"] == 1
