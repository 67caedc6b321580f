"""What the CLI says: help that names every accepted value without Python types, and errors about what is
actually wrong (a device is a device problem, not a model download problem)."""

from __future__ import annotations

import re

import pytest
import torch
from typer.testing import CliRunner

from crossgap_index.cli.app import app
from crossgap_index.models import bundled_names

runner = CliRunner()


def help_of(*command: str) -> str:
    result = runner.invoke(app, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())  # unwrapped


@pytest.mark.parametrize("command", ["query", "build-index", "serve", "eval", "tune", "train-inverter", "demo"])
def test_device_help_names_every_kind(command):
    words = help_of(command)
    assert "cuda:N" in words and "mps" in words and "cpu" in words


def test_model_help_names_every_bundled_model():
    words = help_of("build-index")
    assert {"crossgap-fashion", "crossgap-small", "tiny-random"} <= set(bundled_names())
    assert all(name in words for name in bundled_names())


@pytest.mark.parametrize("command", ["eval", "tune"])
def test_dataset_help_names_the_generated_and_shipped_worlds(command):
    words = help_of(command)
    assert "synthetic:SEED:N" in words and ":vocab=tune|test" in words and ":relevance=shape|colour|both" in words
    assert "fashion-mnist:test" in words and "fashion-mnist:train" in words and ":seed=S" in words


def test_the_stated_dataset_specs_are_what_the_reader_takes():
    from crossgap_index.cli.eval_command import DATASET_SPECS
    from crossgap_index.evaluation.data import SYNTHETIC_USAGE, synthetic_size

    example = re.search(r"e\.g\. (synthetic:\S+?)\)", DATASET_SPECS).group(1)
    assert synthetic_size(example) == (1001, 480)
    assert "vocab=tune|test" in SYNTHETIC_USAGE and "relevance=shape|colour|both" in SYNTHETIC_USAGE


def test_train_inverter_steps_help_states_the_defaults():
    from crossgap_index.cli.tune_command import INVERTER_STEPS_DEFAULT
    from crossgap_index.inversion.inverter import DEFAULT_STEPS

    assert INVERTER_STEPS_DEFAULT == DEFAULT_STEPS
    words = help_of("train-inverter")
    steps = words[words.index("--steps") :]
    assert f"{DEFAULT_STEPS['oti']} for images" in steps and f"{DEFAULT_STEPS['ovi']} for texts" in steps
    assert "see --help" not in words


def test_repeatable_options_show_no_python_types():
    assert "list[" not in help_of("remove").replace("<list[Path]>", "")  # typer types arguments; options are named
    assert "list[" not in help_of("export")
    assert "--exclude GLOB" in help_of("build-index")


@pytest.fixture(scope="module")
def one_photo_index(tmp_path_factory):
    from crossgap_index import CrossGapIndex
    from tests.support.photos import write_photo

    root = tmp_path_factory.mktemp("words")
    write_photo(root / "photo.png", seed=1)
    with CrossGapIndex.create(root / "index", model="tiny-random", device="cpu") as cgx:
        cgx.add_images([root / "photo.png"])
    return root / "index"


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has an MPS device")
def test_a_device_torch_lacks_is_a_device_error(one_photo_index):
    result = runner.invoke(app, ["query", "a red circle", "--index", str(one_photo_index), "--device", "mps"])
    assert result.exit_code == 1
    assert "no MPS (Apple GPU) device" in result.output and "Offline options" not in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_cuda_number_without_cuda_is_a_device_error(one_photo_index):
    result = runner.invoke(app, ["query", "a red circle", "--index", str(one_photo_index), "--device", "cuda:1"])
    assert result.exit_code == 1 and "torch sees no CUDA device" in result.output


def test_headings_use_the_plain_mode_names(one_photo_index):
    photo = one_photo_index.parent / "photo.png"
    plain = runner.invoke(app, ["query", str(photo), "--index", str(one_photo_index), "--device", "cpu"])
    assert plain.exit_code == 0, plain.output
    assert "· Plain similarity (intra)" in plain.stdout
    args = ["query", str(photo), "--index", str(one_photo_index), "--mode", "fused", "--steps", "2", "-q"]
    fused = runner.invoke(app, [*args, "--device", "cpu"], terminal_width=250)
    assert fused.exit_code == 0, fused.output
    words = " ".join(fused.stdout.split())
    assert "· Plain + translated (fused)" in words and "[" not in words.splitlines()[0]
    assert "merged" in words and "Plain similarity rank/score" in words and "Translate the query rank/score" in words


def test_the_inversion_bar_knows_its_total(one_photo_index):
    """`cgx query` draws "inverting 7/25", not "7/?": the total is the served mode's step count."""
    from crossgap_index import CrossGapIndex
    from crossgap_index.cli.query_command import inversion_steps
    from crossgap_index.inversion import InversionConfig
    from crossgap_index.search.options import SearchOptions

    served_default = InversionConfig()
    with CrossGapIndex.open(one_photo_index, device="cpu") as cgx:

        def total(modality: str, config: InversionConfig = served_default, **options) -> int | None:
            return inversion_steps(cgx.describe_mode(modality, SearchOptions(**options)), config, modality == "image")

        assert total("image", mode="cross") == served_default.oti_steps
        assert total("image", InversionConfig(oti_steps=7), mode="fused") == 7
        assert total("text", InversionConfig(ovi_steps=9), mode="cross", target="texts") == 9
        assert total("image", mode="intra") is None and total("image", mode="span") is None
        assert total("text", mode="cross") is None  # text -> images is already across: served plainly
