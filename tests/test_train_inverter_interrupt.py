"""Ctrl-C during `cgx train-inverter` keeps the run: training stops after the step it is in, saves its state
(network, AdamW, random generators, epoch order) beside the index, and the same command resumes from there to
the very network an uninterrupted run gives. The SIGINT lands at a known point: once the bar shows training."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from crossgap_index import CrossGapIndex
from crossgap_index.inversion.checkpoint import TrainingInterrupted
from crossgap_index.inversion.inverter import InverterConfig
from tests.support.serve import copy_index

CONFIG = InverterConfig(steps=9, batch_size=8)  # 48 images: a new epoch (reshuffle) every 6 steps


def stop_at(step: int):
    def progress(done: int, total: int, loss: float) -> None:
        if done == step:
            raise KeyboardInterrupt  # where the CLI's SIGINT handler raises it: after a whole step

    return progress


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_uninterrupted_network(serve_template, tmp_path):
    whole_dir, _ = copy_index(serve_template, tmp_path / "whole")
    cut_dir, _ = copy_index(serve_template, tmp_path / "cut")
    with CrossGapIndex.open(whole_dir, device="cpu") as cgx:
        whole = cgx.train_inverter(CONFIG)
    with CrossGapIndex.open(cut_dir, device="cpu") as cgx:
        with pytest.raises(TrainingInterrupted) as stopped:
            cgx.train_inverter(CONFIG, progress=stop_at(7))  # past an epoch's reshuffle
        assert stopped.value.step == 7 and stopped.value.path.is_file()
        assert not (cut_dir / "inverter.safetensors").exists()
        steps = []
        resumed = cgx.train_inverter(CONFIG, progress=lambda done, total, loss: steps.append(done))
    assert steps == [8, 9]  # on from where it stopped
    assert not stopped.value.path.exists()  # the finished run leaves no checkpoint
    assert resumed.stats["steps"] == whole.stats["steps"] == 9
    assert resumed.stats["final_loss"] == pytest.approx(whole.stats["final_loss"], abs=1e-6)
    for name, value in whole.net.state_dict().items():
        torch.testing.assert_close(resumed.net.state_dict()[name], value, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_a_checkpoint_of_another_run_is_not_resumed(serve_template, tmp_path):
    index_dir, _ = copy_index(serve_template, tmp_path)
    with CrossGapIndex.open(index_dir, device="cpu") as cgx:
        with pytest.raises(TrainingInterrupted):
            cgx.train_inverter(CONFIG, progress=stop_at(3))
        steps = []
        other = InverterConfig(steps=4, batch_size=8)  # other settings: trained from the start
        cgx.train_inverter(other, progress=lambda done, total, loss: steps.append(done))
    assert steps == [1, 2, 3, 4]


@pytest.mark.slow
def test_ctrl_c_during_training_saves_and_the_same_command_resumes(serve_template, tmp_path):
    index_dir, _ = copy_index(serve_template, tmp_path)
    # TTY_COMPATIBLE, TTY_INTERACTIVE: rich draws the bar on a pipe, so the test sees when the training loop runs
    env = {**os.environ, "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "COLUMNS": "200"}
    command = [sys.executable, "-m", "crossgap_index", "train-inverter", "--index", str(index_dir)]
    command += ["--device", "cpu", "--steps", "100000000", "--batch-size", "4"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, env=env)
    try:
        seen = b""
        deadline = time.monotonic() + 300
        while b"training" not in seen:  # the bar is drawn: the training loop runs
            assert time.monotonic() < deadline and process.poll() is None, seen.decode(errors="replace")
            seen += os.read(process.stderr.fileno(), 4096)
        process.send_signal(signal.SIGINT)
        rest = process.stderr.read()
        assert process.wait(timeout=120) == 130
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    said = (seen + rest).decode(errors="replace")
    assert "Traceback" not in said
    assert "the training so far is saved (inverter.safetensors.partial): re-run the same command to resume" in said
    assert (index_dir / "inverter.safetensors.partial").is_file()
    assert not (index_dir / "inverter.safetensors").exists()
