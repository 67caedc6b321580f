"""The compiled inversion step (inversion/compiled.py) against its eager twin, the oracle of the fast path: fp32 within
1e-5 cosine of the eager loop and of the full-context oracle, bf16 within the documented bf16 tolerance
(tests/test_precision.py), a query in a batch equal to it solo, and the settings that choose it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from crossgap_index.errors import QueryError
from crossgap_index.inversion import InversionConfig, compiled, oti, oti_reference, ovi, ovi_reference
from crossgap_index.inversion.optimise import _setup
from crossgap_index.models.factory import LoadedModel, load_model
from tests.test_precision import INVERSION_AGREE

METHODS = {"oti": (oti, oti_reference), "ovi": (ovi, ovi_reference)}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def small() -> LoadedModel:
    return load_model("crossgap-small", "cpu")


@pytest.fixture
def process_compiles():
    """This process asking for compiled steps (as the server does at start), switched back after the test."""
    compiled.compile_in_process(True)
    yield
    compiled.compile_in_process(False)


def _targets(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1)  # both unit rows


@pytest.mark.slow  # compiling a step takes seconds to a minute of CPU
@pytest.mark.parametrize("method", sorted(METHODS))
def test_compiled_fp32_matches_the_eager_loop_the_oracle_and_itself_solo(small: LoadedModel, method: str) -> None:
    fast, oracle = METHODS[method]
    config = InversionConfig(oti_steps=4, ovi_steps=4, precision="fp32", batch_size=3, compile=True)
    targets, seeds = _targets(3, small.embed_dim), [1, 2, 3]
    got = fast(small, targets, config, seeds)
    eager = fast(small, targets, dataclasses.replace(config, compile=False), seeds)
    assert _cosines(got, eager).min() > 1 - 1e-5
    assert _cosines(got, oracle(small, targets, config, seeds)).min() > 1 - 1e-5
    solo = np.concatenate([fast(small, targets[i : i + 1], config, seeds[i : i + 1]) for i in range(3)])
    assert _cosines(got, solo).min() > 1 - 1e-5  # fp32 chunks of other sizes: ~1e-7 apart, as in the eager loop


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_compiled_bf16_agrees_with_the_eager_loop_and_a_query_in_a_batch_equals_it_solo(
    small: LoadedModel, method: str
) -> None:
    fast, _ = METHODS[method]
    config = InversionConfig(oti_steps=3, ovi_steps=3, precision="bf16", compile=True)
    targets, seeds = _targets(5, small.embed_dim, seed=2), [11, 12, 13, 14, 15]
    together = fast(small, targets, config, seeds)
    solo = np.concatenate([fast(small, targets[i : i + 1], config, seeds[i : i + 1]) for i in range(5)])
    np.testing.assert_array_equal(together, solo)  # whole lanes: one compiled shape, the same rounding
    eager = fast(small, targets, dataclasses.replace(config, compile=False), seeds)
    assert _cosines(together, eager).min() >= INVERSION_AGREE


def test_compile_unset_follows_what_the_process_asked_for(process_compiles) -> None:
    assert InversionConfig().compiles(CPU)
    assert not InversionConfig(compile=False).compiles(CPU)
    assert not InversionConfig(fast=False).compiles(CPU)  # the oracle never compiles
    compiled.compile_in_process(False)
    assert not InversionConfig().compiles(CPU)  # a one-shot process (the CLI) never compiles unasked
    assert InversionConfig(compile=True).compiles(CPU)


def test_compile_settings_are_checked() -> None:
    with pytest.raises(QueryError, match="compile must be None, True or False"):
        InversionConfig(compile="yes")
    with pytest.raises(QueryError, match="fp32 oracle"):
        InversionConfig(fast=False, compile=True)


@pytest.mark.slow  # over 3 s on a loaded 2-core machine: torch.compile's first import
def test_a_process_keeps_one_compiled_step_per_model_and_settings(small: LoadedModel, process_compiles) -> None:
    config = InversionConfig(precision="fp32")
    first = _setup(small, config, "oti")
    assert first.losses is not None and first.dim == small.embed_dim
    assert _setup(small, dataclasses.replace(config, oti_steps=3, lr=0.1), "oti") is first  # steps, lr: same graph
    assert _setup(small, dataclasses.replace(config, template="a {} photo"), "oti") is not first
    assert _setup(small, config, "ovi") is not first
    assert _setup(small, dataclasses.replace(config, compile=False), "oti").losses is None


def test_the_compiled_loop_refuses_targets_of_another_dimension(small: LoadedModel) -> None:
    # The compiled graph cannot raise the loss's own check: it is made before the first step (nothing compiles).
    config = InversionConfig(oti_steps=2, precision="fp32", compile=True)
    with pytest.raises(QueryError, match=f"dimension {small.embed_dim + 1}, the model's features {small.embed_dim}"):
        oti(small, _targets(1, small.embed_dim + 1), config, [1])
