"""The offline demo runs end to end and draws its contact sheet."""

import shlex

import pytest
from PIL import Image
from typer.testing import CliRunner

from crossgap_index.cli.app import app
from crossgap_index.demo import DEMO_MODES, run_demo


def test_run_demo_writes_index_tables_and_sheet(tmp_path):
    result = run_demo(tmp_path, model="tiny-random", n_images=24, k=3, tune_images=192, device="cpu")
    assert result.build.added == 24
    # 192 photos of 48 classes is below tune's minimum: nothing stored, --cross serves the default
    assert result.tuned is None and not result.tune_stored and "nothing stored" in result.tune_reason
    assert set(result.correct) == set(DEMO_MODES)
    assert set(result.hits) == set(DEMO_MODES) and all(len(h) == 3 for h in result.hits.values())
    assert all(h.path is not None and str(result.query) != h.path for hits in result.hits.values() for h in hits)
    with Image.open(result.sheet) as sheet:
        assert sheet.width > 3 * 96 and sheet.height > len(DEMO_MODES) * 96


@pytest.mark.slow  # over 3 s on a loaded 2-core machine (benchmarks/results/setup.md)
def test_demo_command(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "demo",
            str(tmp_path / "d"),
            "--model",
            "tiny-random",
            "--images",
            "16",
            "-k",
            "2",
            "--tune-images",
            "192",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "intra: query" in result.stdout and "--cross (untuned default)" in result.stdout
    assert "tune: found" in result.stdout
    assert "contact sheet:" in result.stderr and (tmp_path / "d" / "contact_sheet.png").is_file()
    # the closing advice is a command that runs as printed, from any folder (it names the index)
    advice = next(line for line in result.stdout.splitlines() if line.startswith("try it: "))
    words = shlex.split(advice.removeprefix("try it: "))
    assert words[0] == "cgx" and "--index" in words
    again = CliRunner().invoke(app, [*words[1:], "--device", "cpu"])
    assert again.exit_code == 0, again.output
