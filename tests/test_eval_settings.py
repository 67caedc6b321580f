"""What one `cgx eval` run is told, as one value: `EvalSettings` refuses each bad setting in one line before a model
loads, cannot change under a run, and gives the same run whether it is passed whole or as `evaluate`'s keywords;
the command line becomes those settings in one place; eval's rows come from the mode registry, so a registered
mode is measured without a change to the evaluation; the paired comparisons eval and tune print are the
statistics module's."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from crossgap_index.cli.eval_command import EvalFlags, Task, eval_settings
from crossgap_index.cli.tune_command import Modality, inverter_config
from crossgap_index.datasets.synthetic import export_folder
from crossgap_index.errors import InputFileError, QueryError
from crossgap_index.evaluation.data import load_dataset
from crossgap_index.evaluation.protocol import IMAGES, TEXT_TO_IMAGE, TEXTS, evaluate
from crossgap_index.evaluation.settings import SERVED_INVERSION, EvalSettings
from crossgap_index.evaluation.stats import (
    paired_difference,
    paired_interval,
    per_class_comparison,
    per_query_comparison,
    t_quantile_975,
)
from crossgap_index.inversion import InversionConfig
from crossgap_index.inversion.inverter import DEFAULT_STEPS
from crossgap_index.search.mode_spec import Leg, Mode
from crossgap_index.search.modes import resolve_mode
from crossgap_index.search.registry import ModeEntry, register_mode, unregister_mode
from tests.support.photos import MODEL


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"tasks": ["videos"]}, "unknown task 'videos'"),
        ({"sweep_steps": [5, -1]}, "sweep steps must be >= 0"),
        ({"sweep_tokens": [0]}, "sweep tokens >= 1"),
        ({"sweep_patches": [0]}, "sweep patches must be >= 1"),
        ({"sweep_lrs": [0.0]}, "sweep learning rates > 0"),
        ({"span_components": 0}, "span components must be >= 1, got 0"),
        ({"alpha": 1.5}, "alpha must be in [0, 1]"),
        ({"rrf_k": 0}, "rrf_k >= 1"),
        ({"vocab": ["cat", "cat"]}, "a span vocabulary needs at least 2 names, got 1"),
    ],
)
def test_each_bad_setting_is_one_line_when_made(keywords, message):
    with pytest.raises(QueryError) as caught:
        EvalSettings(**keywords)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_settings_are_frozen_and_hold_copies():
    steps, modes = [0, 2], {"tuned": resolve_mode("iso")}
    settings = EvalSettings(sweep_steps=steps, extra_modes=modes, labelled_modes=["tuned"], config=None)
    steps.append(9)
    modes["other"] = resolve_mode("intra")
    assert settings.sweep_steps == (0, 2) and list(settings.extra_modes) == ["tuned"]
    assert settings.config == SERVED_INVERSION and settings.labelled_modes == frozenset({"tuned"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.alpha = 0.3  # type: ignore[misc]


def test_named_modes_add_extra_modes_to_image_to_image_only():
    tuned, span = resolve_mode("iso"), resolve_mode("span")
    settings = EvalSettings(extra_modes={"tuned": tuned}, task_modes={TEXTS: {"mine": span}, IMAGES: {"a": span}})
    assert settings.named_modes(IMAGES) == {"a": span, "tuned": tuned}
    assert settings.named_modes(TEXTS) == {"mine": span}
    assert settings.named_modes(TEXT_TO_IMAGE) == {}


def test_wanted_tasks_follow_the_dataset(tmp_path):
    folder = export_folder(tmp_path / "labelled", 3, 12)
    both = load_dataset(str(folder))
    captions = load_dataset(str(folder / "captions.jsonl"))
    assert EvalSettings().wanted_tasks(both) == [IMAGES, TEXTS]  # text-to-image only when asked
    assert EvalSettings(tasks=["text-to-image"]).wanted_tasks(both) == [TEXT_TO_IMAGE]
    assert EvalSettings().wanted_tasks(captions) == [TEXTS]
    with pytest.raises(InputFileError, match="has no images to evaluate"):
        EvalSettings(tasks=["images"]).wanted_tasks(captions)
    with pytest.raises(QueryError, match="neither is evaluated"):
        EvalSettings(tasks=["text-to-image"], sweep_steps=[2]).wanted_tasks(both)


def test_a_bad_setting_is_refused_before_the_dataset_is_read(tmp_path):
    fifo = tmp_path / "never-read.jsonl"  # nothing writes it: reading it would hang
    os.mkfifo(fifo)
    with pytest.raises(QueryError, match="alpha"):
        evaluate(str(fifo), MODEL, device="cpu", alpha=2.0)
    with pytest.raises(TypeError, match="not both"):
        evaluate(str(fifo), EvalSettings(), device="cpu")


def _flags(**changes) -> EvalFlags:
    given = dict(
        dataset="synthetic:3:12", model=MODEL, device="cpu", vocab=None, span_components=None, task=Task.all,
        steps=None, tokens=1, ovi_steps=7, patches=None, batch_size=16, sweep_steps=None, sweep_tokens="1",
        sweep_patches=None, sweep_lr=None, lr=0.03, index=None, transductive=False, limit=None, precision="fp32",
    )  # fmt: skip
    return EvalFlags(**{**given, **changes})


def test_eval_steps_mean_what_query_steps_mean():
    """``cgx eval --steps N`` inverts image queries with N OTI steps and text queries with N OVI steps, as
    ``cgx query --steps N`` does; ``--ovi-steps`` sets text queries' alone and wins over --steps."""
    _, settings = eval_settings(_flags(steps=3, ovi_steps=None))
    assert (settings.config.oti_steps, settings.config.ovi_steps) == (3, 3)
    _, settings = eval_settings(_flags(steps=3, ovi_steps=7))
    assert (settings.config.oti_steps, settings.config.ovi_steps) == (3, 7)
    _, settings = eval_settings(_flags(steps=None, ovi_steps=None))
    assert settings.config == InversionConfig(lr=0.03, batch_size=16, precision="fp32")


def test_the_command_line_becomes_settings_in_one_place(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("red circle\nblue square\n")
    data, settings = eval_settings(
        _flags(vocab=vocab, task=Task.images, sweep_steps="0,5", sweep_tokens="1,2", sweep_lr="0.01,0.02")
    )
    assert data.spec == "synthetic:3:12" and settings.model == MODEL and settings.tasks == ("images",)
    assert settings.config == InversionConfig(ovi_steps=7, lr=0.03, batch_size=16, precision="fp32")
    assert settings.config.oti_steps == SERVED_INVERSION.oti_steps  # no --steps: the served OTI steps
    assert (settings.sweep_steps, settings.sweep_tokens, settings.sweep_lrs) == ((0, 5), (1, 2), (0.01, 0.02))
    assert settings.sweep_patches == (None,) and settings.vocab == ("red circle", "blue square")
    assert eval_settings(_flags(steps=3, patches=2))[1].config.n_patches == 2
    assert eval_settings(_flags(steps=3))[1].config.oti_steps == 3
    with pytest.raises(QueryError, match="--transductive compares with an index's own inverters"):
        eval_settings(_flags(transductive=True))
    with pytest.raises(QueryError, match="--sweep-lr needs one or more rates > 0"):
        eval_settings(_flags(sweep_lr="0"))


def test_train_inverter_flags_become_one_config():
    images = inverter_config(Modality.images, None, None, 64, None)
    texts = inverter_config(Modality.texts, 10, 4, 32, 5.0)
    assert (images.direction, images.n_tokens, images.steps) == ("oti", 1, DEFAULT_STEPS["oti"])
    assert (texts.direction, texts.n_tokens, texts.steps, texts.max_seconds) == ("ovi", 4, 10, 5.0)


def _toy(options, context) -> Mode:
    return Mode("toy", (Leg("toy"),))


def _toy_inverting(options, context) -> Mode:
    return Mode("toy-inverting", (Leg("toy-inverting", "invert"),))


def test_a_registered_mode_is_an_eval_row_without_touching_the_evaluation():
    from crossgap_index.evaluation.modes import eval_modes

    register_mode(ModeEntry("toy", _toy, "Toy", "A toy mode.", "the toy's eval text"))
    register_mode(ModeEntry("toy-inverting", _toy_inverting, "Toy inverting", "Inverts.", "inverting toy"))
    try:
        for task in (IMAGES, TEXTS, TEXT_TO_IMAGE):
            rows = eval_modes(task, SERVED_INVERSION, [], model="crossgap-small")
            assert rows["toy"] == (Mode("toy", (Leg("toy"),)), "the toy's eval text")
            assert list(rows)[:2] == ["intra", "default"]
            # a caption against images is already inter-modal: a mode that translates the query is not a row there
            assert ("toy-inverting" in rows) == (task != TEXT_TO_IMAGE)
    finally:
        unregister_mode("toy")
        unregister_mode("toy-inverting")
    assert "toy" not in eval_modes(IMAGES, SERVED_INVERSION, [], model="crossgap-small")


def test_eval_rows_use_the_vocabulary_only_where_the_entry_takes_labels():
    from crossgap_index.evaluation.modes import eval_modes

    without = eval_modes(IMAGES, SERVED_INVERSION, [], model="crossgap-small")
    labelled = eval_modes(IMAGES, SERVED_INVERSION, ["a", "b"], span_components=3, model="crossgap-small")
    assert "span" not in without and "concept" not in without and "span-imagenet" in without
    assert labelled["span"][0].legs[0].params == {"kind": "span", "vocabulary": ["a", "b"], "components": 3}
    assert labelled["span-imagenet"][0].legs[0].params["components"] == 3
    assert "fused" not in labelled and {"fused-rrf", "fused-score"} <= set(labelled)


def test_paired_comparisons_are_the_statistics_modules():
    rng = np.random.default_rng(0)
    base = rng.random(40)
    base[3] = np.nan  # a query with nothing relevant: left out
    values = base + rng.normal(0.05, 0.1, 40)
    versus = per_query_comparison(values, base)
    assert (versus.mean, versus.se) == paired_difference(values, base)
    low, _, high = paired_interval(values, base)
    assert versus.interval == (low, high)
    classes = np.repeat(np.arange(8), 5)
    by_class = per_class_comparison(values, base, classes)
    assert by_class.mean == versus.mean  # the per-query mean, with the interval over classes
    centre = (by_class.low + by_class.high) / 2
    assert by_class.se == pytest.approx((by_class.high - centre) / t_quantile_975(7))
    assert per_query_comparison(values[:1], base[:1]).interval is None


@pytest.mark.slow  # two evaluations of a small text task
def test_settings_whole_and_keywords_give_the_same_run():
    config = InversionConfig(oti_steps=1, ovi_steps=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(DEFAULT_STEPS, "ovi", 2)
        keywords = evaluate("synthetic:3:12", "crossgap-small", device="cpu", config=config, tasks=["texts"])
        settings = EvalSettings(model="crossgap-small", device="cpu", config=config, tasks=("texts",))
        whole = evaluate(load_dataset("synthetic:3:12"), settings)
    first, second = (_without_times(r.to_dict()) for r in (keywords, whole))
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    assert list(first["tasks"][TEXTS]["modes"])[:3] == ["intra", "default", "cross"]


def _without_times(doc: dict) -> dict:
    doc.pop("timings")
    for task in doc["tasks"].values():
        for mode in task["modes"].values():
            for key in ("seconds", "ms_per_query", "ms_per_query_batch"):
                mode.pop(key)
    return doc
