"""The CPU fast path's thread rule (inversion/threads.py): small steps run on one intra-op thread, which changes
speed only. Checked against the oracle (fp32, the process's threads), against the same loop on the process's
threads, batch against solo, and the process's thread count after loops that end, fail, or run concurrently."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from crossgap_index.errors import QueryError
from crossgap_index.inversion import InversionConfig, oti, oti_reference, ovi, ovi_reference
from crossgap_index.inversion.keys import cache_key
from crossgap_index.inversion.threads import SMALL_STEP_FLOPS, running_on, step_threads
from crossgap_index.models.factory import LoadedModel, load_model

METHODS = {"oti": (oti, oti_reference), "ovi": (ovi, ovi_reference)}


@pytest.fixture(scope="module")
def small() -> LoadedModel:
    return load_model("crossgap-small", "cpu")


@pytest.fixture
def two_threads(monkeypatch):
    """The process set to 2 intra-op threads for the test (the development VM's default), restored after, with
    OpenMP's wait policy read as spinning (the rule's case: a script that imported torch before crossgap_index)."""
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _targets(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def _dim(loaded: LoadedModel) -> int:
    return int(loaded.model.text_projection.shape[1])


@pytest.mark.parametrize("method", sorted(METHODS))
def test_fast_path_on_one_thread_matches_the_oracle(small: LoadedModel, two_threads, method) -> None:
    fast, oracle = METHODS[method]
    config = InversionConfig(oti_steps=4, ovi_steps=4, precision="fp32", batch_size=1)
    targets = _targets(3, _dim(small))
    got = fast(small, targets, config, [1, 2, 3])
    assert torch.get_num_threads() == 2  # the loop ran on one thread and gave the process its two back
    want = oracle(small, targets, config, [1, 2, 3])
    assert np.sum(got * want, axis=1).min() > 1 - 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_threads_change_speed_only(small: LoadedModel, two_threads, method, precision) -> None:
    fast, _ = METHODS[method]
    targets, seeds = _targets(4, _dim(small), seed=1), [5, 6, 7, 8]
    results = [
        fast(small, targets, InversionConfig(oti_steps=3, ovi_steps=3, precision=precision, cpu_threads=n), seeds)
        for n in (None, 1, 2)
    ]
    for other in results[1:]:
        assert np.sum(results[0] * other, axis=1).min() > 1 - 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_query_in_a_batch_equals_it_solo_under_the_rule(small: LoadedModel, two_threads, method) -> None:
    """bf16 chunks are whole lanes, so every chunk gets the same threads whatever the batch: bit for bit."""
    fast, _ = METHODS[method]
    config = InversionConfig(oti_steps=3, ovi_steps=3, precision="bf16")
    targets, seeds = _targets(5, _dim(small), seed=2), [11, 12, 13, 14, 15]
    together = fast(small, targets, config, seeds)
    solo = np.concatenate([fast(small, targets[i : i + 1], config, seeds[i : i + 1]) for i in range(5)])
    np.testing.assert_array_equal(together, solo)


def test_the_process_threads_come_back_after_a_failing_loop(small: LoadedModel, two_threads) -> None:
    def stop(step: int, loss: float) -> None:
        assert torch.get_num_threads() == 1  # inside the loop: one thread for crossgap-small's small steps
        raise RuntimeError("stopped at a known step")

    with pytest.raises(RuntimeError, match="known step"):
        oti(small, _targets(1, _dim(small)), InversionConfig(oti_steps=3, precision="fp32"), [0], progress=stop)
    assert torch.get_num_threads() == 2


def test_concurrent_loops_share_one_setting_and_restore_it(two_threads) -> None:
    """Many threads enter and leave in every order; the last to leave restores the process's count."""
    inside, release = threading.Barrier(8), threading.Event()
    seen: list[int] = []

    def loop() -> None:
        with running_on(1):
            inside.wait(timeout=60)
            seen.append(torch.get_num_threads())
            release.wait(timeout=60)

    workers = [threading.Thread(target=loop) for _ in range(8)]
    for worker in workers:
        worker.start()
    release.set()
    for worker in workers:
        worker.join(timeout=60)
    assert not any(worker.is_alive() for worker in workers)
    assert len(seen) == 8
    assert torch.get_num_threads() == 2


def test_the_rule(two_threads, monkeypatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert step_threads(None, SMALL_STEP_FLOPS / 2, cpu) == 1
    assert step_threads(None, SMALL_STEP_FLOPS * 2, cpu) == 2  # large steps: the process's setting
    assert step_threads(3, SMALL_STEP_FLOPS / 2, cpu) == 3  # asked for: as asked
    assert step_threads(None, SMALL_STEP_FLOPS / 2, cuda) == 0  # another device: nothing changes
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    assert step_threads(None, SMALL_STEP_FLOPS / 2, cpu) == 1  # waiting threads sleep, but still cost a wake-up


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_bad_thread_settings_are_refused_in_one_line(bad) -> None:
    with pytest.raises(QueryError, match="cpu_threads"):
        InversionConfig(cpu_threads=bad)


def test_threads_stay_out_of_cache_keys() -> None:
    keys = {cache_key("m", "oti", InversionConfig(cpu_threads=n), "d") for n in (None, 1, 4)}
    assert len(keys) == 1


@pytest.mark.slow
def test_inverter_training_under_the_rule_equals_it_on_the_process_threads(small, two_threads, monkeypatch) -> None:
    from crossgap_index.inversion import threads
    from crossgap_index.inversion.inverter import InverterConfig, train_inverter

    features = _targets(40, _dim(small), seed=3)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    config = InverterConfig(steps=3, batch_size=16)
    ruled = train_inverter(small, features, config)  # OTI through crossgap-small's text tower: one thread
    assert torch.get_num_threads() == 2
    monkeypatch.setattr(threads, "SMALL_STEP_FLOPS", 0.0)  # every step on the process's threads
    plain = train_inverter(small, features, config)
    for name, tensor in ruled.net.state_dict().items():
        torch.testing.assert_close(tensor, plain.net.state_dict()[name], rtol=0, atol=1e-6)
