"""One meaning for inversion settings, wherever they are given: `InversionFlags` turns flags into the one
`InversionConfig`, `--steps` sets the steps of the query's own direction (OTI for an image, OVI for a text),
and `cgx query` and the HTTP server's request ask for the same inversion with the same settings."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from crossgap_index.cli.app import app
from crossgap_index.errors import QueryError
from crossgap_index.inversion import InversionConfig
from crossgap_index.inversion.flags import InversionFlags

runner = CliRunner()


def test_no_flags_ask_for_the_served_settings():
    assert InversionFlags().config() is None
    assert InversionFlags().config_or_default() == InversionConfig()


def test_steps_sets_both_directions():
    config = InversionFlags(steps=7).config()
    assert (config.oti_steps, config.ovi_steps) == (7, 7)
    assert config == InversionConfig(oti_steps=7, ovi_steps=7)


def test_a_direction_of_its_own_wins_over_steps():
    config = InversionFlags(steps=7, ovi_steps=40).config()
    assert (config.oti_steps, config.ovi_steps) == (7, 40)
    only_oti = InversionFlags(oti_steps=3).config()
    assert (only_oti.oti_steps, only_oti.ovi_steps) == (3, InversionConfig.ovi_steps)


def test_every_flag_lands_in_its_field():
    flags = InversionFlags(tokens=2, patches=4, lr=0.05, template="a sketch of {}", batch_size=8, precision="fp32")
    assert flags.config() == InversionConfig(
        n_tokens=2, n_patches=4, lr=0.05, template="a sketch of {}", batch_size=8, precision="fp32"
    )
    assert InversionFlags(precision="fp32").config() == InversionConfig(precision="fp32")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (InversionFlags(steps=-1), "steps must be >= 0"),
        (InversionFlags(lr=1e30), "lr must be > 0 and <= 10"),
        (InversionFlags(template="no marker"), "template must contain '{}' exactly once"),
        (InversionFlags(precision="fp8"), "precision must be one of"),
    ],
)
def test_a_bad_value_is_one_line(flags, message):
    with pytest.raises(QueryError) as caught:
        flags.config()
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_the_server_request_means_what_the_flags_mean():
    """The HTTP request's ``steps`` and the CLI's ``--steps`` build the same InversionConfig."""
    from pydantic import ValidationError

    from crossgap_index.server.models import SearchRequest
    from crossgap_index.server.service import SearchService

    assert SearchRequest(text="a red circle").inversion() is None
    for settings in ({"steps": 5}, {"steps": 5, "tokens": 2, "lr": 0.01}, {"patches": 4, "precision": "fp32"}, {}):
        request = SearchRequest(text="a red circle", mode="cross", **settings)
        assert request.inversion() == InversionFlags(**settings).config(), settings
        assert SearchService._options(request).inversion == request.inversion()
    assert SearchRequest(text="a red circle", steps=3).inversion().ovi_steps == 3
    with pytest.raises(ValidationError):
        SearchRequest(text="x", steps=-1)


@pytest.fixture(scope="module")
def text_index(tmp_path_factory):
    from crossgap_index import CrossGapIndex
    from tests.support.photos import MODEL, write_photo

    root = tmp_path_factory.mktemp("flags")
    with CrossGapIndex.create(root / "index", model=MODEL, device="cpu") as cgx:
        cgx.add_texts(["a red circle", "a blue square", "a green triangle"])
        cgx.add_images([write_photo(root / "photo.png", seed=3)])
    return root


def served_params(root, *args: str) -> dict:
    command = ["query", *args, "--index", str(root / "index"), "--mode", "cross", "--device", "cpu", "--json"]
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    (leg,) = json.loads(result.stdout)["settings"]["served"]["legs"]
    return leg["params"]


@pytest.mark.slow
def test_query_steps_are_the_text_querys_ovi_steps(text_index):
    params = served_params(text_index, "a red circle", "--target", "texts", "--steps", "3")
    assert params["ovi_steps"] == 3 and params["oti_steps"] == 3


@pytest.mark.slow
def test_query_steps_are_the_image_querys_oti_steps(text_index):
    params = served_params(text_index, str(text_index / "photo.png"), "--steps", "4", "--tokens", "2")
    assert params["oti_steps"] == 4 and params["n_tokens"] == 2


@pytest.mark.slow
def test_query_without_inversion_flags_serves_the_defaults(text_index):
    assert served_params(text_index, str(text_index / "photo.png")) == {}


@pytest.mark.slow
def test_a_bad_query_flag_is_one_line_naming_it(text_index):
    result = runner.invoke(app, ["query", "a red circle", "--index", str(text_index / "index"), "--lr", "100"])
    assert result.exit_code == 1
    assert result.output.startswith("cgx: error:") and "lr must be > 0 and <= 10" in result.output
    assert len(result.output.strip().splitlines()) == 1
