"""Start-up and output of `cgx`: commands that need no model import no
torch, help shows its defaults, --version, and the offline probe against real sockets."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from typer.testing import CliRunner

from crossgap_index import CrossGapIndex
from crossgap_index.cli.app import app
from tests.support.cli import REPO
from tests.support.photos import MODEL, write_photo

HEAVY = ("torch", "open_clip")
runner = CliRunner()


def run_python(code: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with this worktree first on the path."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=full_env, timeout=120, cwd=REPO
    )


# Runs the real entry point, then reports which modules it imported on the last stderr line.
CGX_AND_MODULES = """
import json, sys
from crossgap_index.cli.app import main
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print(json.dumps({"exit": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def cgx_modules(*args: str) -> tuple[dict, subprocess.CompletedProcess]:
    proc = run_python(CGX_AND_MODULES, *args)
    return json.loads(proc.stderr.strip().splitlines()[-1]), proc


def test_importing_the_cli_imports_no_torch():
    proc = run_python("import sys, json, crossgap_index.cli.app; print(json.dumps(sorted(sys.modules)))")
    modules = set(json.loads(proc.stdout))
    assert proc.returncode == 0, proc.stderr
    assert not modules & set(HEAVY)
    assert "faiss" not in modules and "numpy" not in modules  # --help needs neither


def test_help_imports_no_torch_and_shows_defaults():
    report, proc = cgx_modules("build-index", "--help")
    assert report["exit"] == 0
    assert not set(report["modules"]) & set(HEAVY)
    help_text = " ".join(proc.stdout.split())  # click wraps long lines
    assert "[default: $CGX_INDEX or the user data dir]" in help_text
    assert "[default: 64; x>=1]" in help_text  # --batch-size
    assert "--max-file-mb" in help_text and "[default: 256.0" in help_text


def test_a_command_builds_alone_and_helps_as_in_the_full_app():
    """`main` builds only the command its line names: no other command's module loads, and what the command
    says (help, a bad option) is what the app with every command says."""
    report, proc = cgx_modules("query", "--help")
    assert report["exit"] == 0, proc.stderr
    commands = {m for m in report["modules"] if m.startswith("crossgap_index.cli.") and m.endswith("_command")}
    assert commands == {"crossgap_index.cli.query_command"}
    full_app = "from crossgap_index.cli.app import app; app()"  # every command built, in a process like main's
    assert proc.stdout == run_python(full_app, "query", "--help").stdout
    bad, bad_proc = cgx_modules("query", "--no-such-option")
    full = run_python(full_app, "query", "--no-such-option")
    assert bad["exit"] == full.returncode == 2
    assert "No such option: --no-such-option" in bad_proc.stderr
    assert bad_proc.stderr.startswith(full.stderr)  # and then the line naming the modules


def test_an_unknown_command_is_named_among_all():
    report, proc = cgx_modules("qurey")
    assert report["exit"] == 2
    assert "No such command 'qurey'. Did you mean 'query'?" in proc.stderr


def test_info_imports_no_torch(tmp_path):
    with CrossGapIndex.create(tmp_path / "idx", model=MODEL, device="cpu") as index:
        index.add_texts(["a red bicycle", "a blue car"])
    report, proc = cgx_modules("info", "--index", str(tmp_path / "idx"), "--json")
    assert report["exit"] == 0, proc.stderr
    assert json.loads(proc.stdout)["counts"]["text"] == 2
    assert not set(report["modules"]) & set(HEAVY)


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.startswith("cgx (crossgap-index) 0.")


def test_library_import_is_light_until_used():
    proc = run_python(
        "import sys; from crossgap_index import CrossGapIndex, __version__; "
        "from crossgap_index.inversion import InversionConfig; InversionConfig(); "
        "print(int('torch' in sys.modules))"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0"


# -- the offline probe: real sockets on loopback ----------------------------------------------------
PROBE = """
import os, sys
from crossgap_index.models.offline import go_offline_if_unreachable
went = go_offline_if_unreachable(timeout=2.0)
print(went, os.environ.get("HF_HUB_OFFLINE"))
"""


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once it is closed


def test_unreachable_hub_switches_to_offline_mode():
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}
    env_clean = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        env={**env_clean, "PYTHONPATH": str(REPO), **env},
        timeout=60,
    )
    assert proc.stdout.split() == ["True", "1"], proc.stderr


def test_reachable_hub_and_explicit_setting_are_left_alone():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        env_clean = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        env = {**env_clean, "PYTHONPATH": str(REPO), "HF_ENDPOINT": f"http://127.0.0.1:{server.getsockname()[1]}"}
        proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=60)
        assert proc.stdout.split() == ["False", "None"], proc.stderr
    env = {**env, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=60)
    assert proc.stdout.split() == ["False", "0"], proc.stderr


def test_tables_keep_whole_paths_when_not_a_terminal(tmp_path):
    folder = tmp_path / ("a-rather-long-folder-name-" * 5) / "photos"
    for i in range(3):
        write_photo(folder / f"picture-with-a-long-name-{i}.png", seed=i)
    with CrossGapIndex.create(tmp_path / "idx", model=MODEL, device="cpu") as index:
        index.index_folders([folder])
    query = folder / "picture-with-a-long-name-0.png"
    result = runner.invoke(app, ["query", str(query), "--index", str(tmp_path / "idx"), "-k", "3"])
    assert result.exit_code == 0, result.output
    assert str(query) in result.stdout  # not cut to 80 columns
    assert "note: 3 hits, fewer than -k" not in result.stderr
    result = runner.invoke(app, ["query", str(query), "--index", str(tmp_path / "idx"), "-k", "50", "--paths-only"])
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0] == str(query)
    assert result.stderr.strip() == "cgx: note: 3 hits, fewer than -k 50: the index holds 3 images"


def test_shared_words_import_no_numpy():
    """crossgap_index.words is read at CLI start (the RRF constant in --help): it must stay free of numpy."""
    code = "import sys, crossgap_index.words; print(any(m.split('.')[0] == 'numpy' for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
