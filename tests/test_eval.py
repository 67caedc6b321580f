"""`cgx eval` end to end: every mode on small synthetic data, the folder and jsonl forms, span projection,
the fused rankings, bad inputs, and the command itself through a register-free typer app."""

import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from crossgap_index.cli.eval_command import eval_command
from crossgap_index.datasets.synthetic import CLASS_NAMES, export_folder
from crossgap_index.errors import CrossGapError, InputFileError, QueryError
from crossgap_index.evaluation.data import load_dataset, read_vocab
from crossgap_index.evaluation.metrics import METRICS, retrieval_metrics
from crossgap_index.evaluation.protocol import IMAGES, TEXTS, eval_modes, evaluate
from crossgap_index.inversion import InversionConfig
from crossgap_index.inversion.inverter import DEFAULT_STEPS
from crossgap_index.models._registry import bundled_dir
from crossgap_index.search.modes import default_cross
from crossgap_index.search.span import PRESETS, SpanProjection, span_settings
from tests.support.photos import MODEL

SEED, N = 3, 24  # enough for every mode to run and report: these tests check plumbing, not quality
FEW_STEPS = InversionConfig(oti_steps=2, ovi_steps=2)
INVERTER_STEPS = 4
PEER_MODES = [
    "aqe", "dba", "nnn", "qbnorm", "center", "center-dn", "dba+aqe", "span-imagenet+aqe", "span-imagenet+nnn",
    "span-imagenet+qbnorm",
]  # fmt: skip
IMAGE_MODES = [
    "intra", "default", "cross", "fused-rrf", "fused-score", "cross-gallery", "span", "concept", "span-imagenet", "iso",
    *PEER_MODES, "inverter", "warm",
]  # fmt: skip
TEXT_MODES = [
    "intra", "default", "cross", "fused-rrf", "fused-score", "cross-gallery", "span", "concept", "span-imagenet", "iso",
    *PEER_MODES, "inverter", "warm", "fused-span-cross", "fused-span-inverter",
]  # fmt: skip


@pytest.fixture(scope="module")
def result():
    # These tests check that every mode runs and reports, not how good an inverter gets: the transductive
    # inverters train a few steps (as FEW_STEPS cuts OTI/OVI), not their 48 / 128 (most of the fixture's time).
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(DEFAULT_STEPS, "oti", INVERTER_STEPS)
        patch.setitem(DEFAULT_STEPS, "ovi", INVERTER_STEPS)
        return evaluate(f"synthetic:{SEED}:{N}", MODEL, device="cpu", config=FEW_STEPS, sweep_steps=[0, 2])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export_folder(tmp_path_factory.mktemp("labelled"), SEED, N)


def test_every_mode_runs_on_both_tasks(result):
    images, texts = result.tasks[IMAGES], result.tasks[TEXTS]
    assert list(images.modes) == IMAGE_MODES and list(texts.modes) == TEXT_MODES
    assert images.leave_one_out and images.n_gallery == N - 1
    assert images.n_queries + images.n_skipped_queries == N
    assert (texts.n_queries, texts.n_gallery, texts.leave_one_out) == (N, 4 * N, False)
    for task in (images, texts):
        for mode in task.modes.values():
            assert set(mode.metrics) == set(METRICS)
            assert all(0.0 <= v <= 1.0 for v in mode.metrics.values()), mode
            gain = mode.metrics["map"] - task.modes["intra"].metrics["map"]
            assert mode.map_vs_intra == pytest.approx(gain, abs=1e-12) and mode.map_vs_intra_se >= 0
            assert mode.ms_per_query is not None and mode.ms_per_query > 0
    assert 0.0 <= result.zero_shot["accuracy"] <= 1.0 and result.zero_shot["classes"] == 48
    assert result.settings["span"]["components"] == "d/2"  # tiny-random has no measured default: the published
    assert result.model == MODEL and result.settings["inversion"]["oti_steps"] == 2
    assert result.timings["embed_ms_per_image"] > 0


def test_sweep_point_at_the_configured_steps_is_the_cross_mode(result):
    for task in (IMAGES, TEXTS):  # OTI on image queries, OVI on text queries
        points = [p for p in result.sweep if p.task == task]
        assert [p.steps for p in points] == [0, 2]
        assert points[1].metrics == result.tasks[task].modes["cross"].metrics


def test_result_is_one_json_document(result):
    doc = json.loads(json.dumps(result.to_dict()))
    assert set(doc["tasks"]) == {IMAGES, TEXTS}
    assert set(doc["tasks"][IMAGES]["best"]) == set(METRICS)
    assert doc["dataset"]["images"] == N and doc["timings"]["total"] > 0


@pytest.mark.slow  # over 3 s on a loaded 2-core machine (benchmarks/results/setup.md)
def test_folder_and_jsonl_forms_measure_the_same_as_synthetic(exported):
    """export_folder writes the same PNG bytes, so content hashes, OTI seeds and every metric agree: the
    gallery is put in content-hash order, so ties fall alike although the folder lists images by class.
    A folder knows only the classes it holds, so both get the same span vocabulary here."""
    synthetic = evaluate(f"synthetic:{SEED}:{N}", MODEL, device="cpu", config=FEW_STEPS, vocab=CLASS_NAMES)
    folder = evaluate(str(exported), MODEL, device="cpu", config=FEW_STEPS, vocab=CLASS_NAMES)
    for task in (IMAGES, TEXTS):
        for mode, measured in folder.tasks[task].modes.items():
            for metric, value in measured.metrics.items():
                assert value == pytest.approx(synthetic.tasks[task].modes[mode].metrics[metric], abs=1e-9), (task, mode)
    jsonl = evaluate(str(exported / "captions.jsonl"), MODEL, device="cpu", config=FEW_STEPS, tasks=["texts"])
    assert list(jsonl.tasks) == [TEXTS] and jsonl.zero_shot is None
    assert jsonl.tasks[TEXTS].modes["cross"].metrics == folder.tasks[TEXTS].modes["cross"].metrics


def test_span_projection_keeps_unit_norm_in_a_half_dimension_subspace():
    rng = np.random.default_rng(0)
    span = SpanProjection().fit(rng.normal(size=(100, 64)))
    assert span.n_components == 32
    projected = span.apply(rng.normal(size=(80, 64)))
    np.testing.assert_allclose(np.linalg.norm(projected, axis=1), 1.0, atol=1e-6)
    assert np.linalg.matrix_rank(projected, tol=1e-5) == 32
    np.testing.assert_allclose(span.apply(projected), projected, atol=1e-6)  # a projection: idempotent
    few = SpanProjection().fit(rng.normal(size=(10, 64)))  # 10 names span 9 centred directions
    assert few.n_components == 9


def test_fused_span_text_modes_fuse_with_the_models_default_span():
    """fused-span-cross / -inverter fuse the span leg the model's untuned --cross projects with (crossgap-small:
    its measured default, not the published d/2) with the cross / inverter leg; --span-components still sets
    the directions."""
    for model in ("crossgap-small", MODEL):
        modes = eval_modes(TEXTS, FEW_STEPS, [], model=model)
        for name, second in (("fused-span-cross", "cross"), ("fused-span-inverter", "inverter")):
            mode = modes[name][0]
            assert (mode.name, mode.fusion) == ("fused", "rrf")
            assert mode.legs[1] == modes[second][0].legs[0]
            assert span_settings(mode.legs[0].params, {}) == default_cross(model).span_settings()
    small = eval_modes(TEXTS, FEW_STEPS, [], model="crossgap-small")["fused-span-cross"][0].legs[0]
    assert span_settings(small.params, {})["components"] == "ev:0.95"
    assert span_settings(small.params, {}) != PRESETS["published"]
    given = eval_modes(TEXTS, FEW_STEPS, [], span_components=5, model="crossgap-small")["fused-span-inverter"][0]
    assert given.legs[0].params["components"] == 5


@pytest.mark.skipif(
    bundled_dir("crossgap-small") is None
    or not (bundled_dir("crossgap-small") / "open_clip_model.safetensors").is_file(),
    reason="crossgap-small weights not trained yet",
)
@pytest.mark.slow  # over 3 s on a loaded 2-core machine (benchmarks/results/setup.md)
def test_crossgap_small_beats_chance():
    got = evaluate("synthetic:3:96", "crossgap-small", device="cpu", config=FEW_STEPS, tasks=["images"])
    task = got.tasks[IMAGES]
    labels = load_dataset("synthetic:3:96").images.labels
    shuffled = retrieval_metrics(np.random.default_rng(0).random((96, 96)), labels, labels, np.eye(96, dtype=bool))
    assert got.zero_shot["accuracy"] > 4 * got.zero_shot["chance"]
    assert task.modes["intra"].metrics["map"] > 2 * shuffled.means()["map"]
    assert task.modes["span"].metrics["map"] > 2 * shuffled.means()["map"]


def _one_line(exc: CrossGapError) -> bool:
    return "\n" not in str(exc) and len(str(exc)) < 300


def test_bad_datasets_give_one_line_errors(tmp_path):
    one_class = tmp_path / "one"
    export_folder(tmp_path / "src", SEED, 8)
    (one_class / "only").mkdir(parents=True)
    for png in list((tmp_path / "src").rglob("*.png"))[:3]:
        (one_class / "only" / png.name).write_bytes(png.read_bytes())
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "a", "group": 1}\n{"text": "b"}\n')
    singletons = tmp_path / "single.jsonl"
    singletons.write_text('{"text": "a", "group": 1}\n{"text": "b", "group": 2}\n')
    (tmp_path / "notes.txt").write_text("x\n")
    cases = [
        str(tmp_path / "missing"),
        str(tmp_path / "notes.txt"),
        "synthetic:x",
        "synthetic:3:1",
        str(one_class),
        str(bad_json),
        str(singletons),
    ]
    for spec in cases:
        with pytest.raises(InputFileError) as caught:
            load_dataset(spec)
        assert _one_line(caught.value), spec
    assert "bad.jsonl:2" in str(pytest.raises(InputFileError, load_dataset, str(bad_json)).value)
    with pytest.raises(InputFileError):
        load_dataset("synthetic:3:10", limit=1)


def test_bad_options_give_one_line_errors(tmp_path, exported):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("red circle\n\nred circle\n")
    with pytest.raises(InputFileError, match="at least 2 names"):
        read_vocab(vocab)
    jsonl = str(exported / "captions.jsonl")
    with pytest.raises(QueryError, match="sweep patches"):
        evaluate(jsonl, MODEL, device="cpu", sweep_steps=[5], sweep_patches=[0])
    with pytest.raises(InputFileError, match="no images"):
        evaluate(jsonl, MODEL, device="cpu", tasks=["images"])
    with pytest.raises(QueryError, match="span components"):
        evaluate(jsonl, MODEL, device="cpu", span_components=1000)
    with pytest.raises(QueryError, match="unknown task"):
        evaluate(jsonl, MODEL, device="cpu", tasks=["videos"])


@pytest.fixture
def cli():
    app = typer.Typer()
    app.command()(eval_command)
    return lambda *args: CliRunner().invoke(app, [*args, "--model", MODEL, "--device", "cpu"])


@pytest.mark.slow  # over 3 s on a loaded 2-core machine (benchmarks/results/setup.md)
def test_cli_json_and_plots(cli, tmp_path):
    run = cli(
        f"synthetic:{SEED}:{N}",
        "--steps",
        "2",
        "--ovi-steps",
        "2",
        "--sweep-steps",
        "0,2",
        "--json",
        "--plots",
        str(tmp_path / "plots"),
        "--quiet",
        "--span-components",
        "8",
    )
    assert run.exit_code == 0, run.output
    doc = json.loads(run.stdout)
    assert set(doc) >= {"dataset", "model", "settings", "tasks", "zero_shot", "sweep", "timings"}
    assert list(doc["tasks"][IMAGES]["modes"]) == IMAGE_MODES
    assert [(p["task"], p["steps"]) for p in doc["sweep"]] == [(IMAGES, 0), (IMAGES, 2), (TEXTS, 0), (TEXTS, 2)]
    assert doc["settings"]["span"]["components"] == 8
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert pngs == [
        "image-to-image-metrics.png",
        "image-to-image-quality-vs-cost.png",
        "oti-steps-sweep.png",
        "ovi-steps-sweep.png",
        "text-to-text-metrics.png",
        "text-to-text-quality-vs-cost.png",
    ]
    assert all((tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG" for name in pngs)


@pytest.mark.slow  # over 3 s (a CLI eval of every mode or a fresh interpreter): the full suite runs it
def test_cli_table_with_vocab_and_errors(cli, tmp_path, exported):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("red circle\nblue square\ngreen star\n")
    run = cli(str(exported / "captions.jsonl"), "--ovi-steps", "2", "--vocab", str(vocab), "--quiet")
    assert run.exit_code == 0, run.output
    assert "text-to-text" in run.stdout and "mAP" in run.stdout and "span" in run.stdout
    bad = cli("synthetic:3:40", "--sweep-steps", "10,x")
    assert isinstance(bad.exception, QueryError)
    missing = cli(str(tmp_path / "nowhere"))
    assert isinstance(missing.exception, InputFileError) and _one_line(missing.exception)
