"""Every fenced example in README.md and docs/*.md runs, as written, the way a reader would run it.

A file's ``bash`` blocks run in order as one shell session (a reader follows a page in one terminal:
README's ``export CGX_INDEX=...`` holds for the blocks after it), with ``cgx`` as this checkout's
``python -m crossgap_index``, ``set -e`` and ``curl --fail-with-body`` (an HTTP error fails the example),
in a fresh HOME and working folder holding the files the examples name (``~/Pictures``,
``~/labelled-photos``, ``photo.jpg``, ``captions.jsonl``, ``classes.txt``). ``python`` blocks run alone in a
fresh folder with a fresh interpreter. Only mechanical changes are made, each stated here:

* ``cgx serve`` runs in the background on a free port (each port a serve line names, 8000 by default,
  is replaced by a free one everywhere in the file), as in a second terminal: until the session ends or
  the next ``cgx serve`` on its port;
* a block marked ``<!-- example: network; offline twin: A -> B -->`` (it downloads a model) runs as
  its offline twin, the block with A replaced by B;
* a block marked ``<!-- example: ci -->`` is the set-up, which CI itself runs (.ci/run): the test checks
  that .ci/run runs each of its commands;
* a block marked ``<!-- example: response -->`` shows a response: the test checks that a real response
  of the server has the same fields.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from crossgap_index.datasets.synthetic import CLASS_NAMES, export_folder, make_item

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"(?:<!-- example: (?P<mark>.*?) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)```", re.S)
SERVE_PORT = re.compile(r"--port (\d+)")
pytestmark = pytest.mark.slow  # minutes: the demo, eval and tune run at the sizes the README names


@dataclass
class Block:
    file: Path
    line: int
    lang: str
    body: str
    mark: str | None


def blocks(file: Path) -> list[Block]:
    text = file.read_text(encoding="utf-8")
    return [
        Block(file, text.count("\n", 0, m.start("lang")) + 1, m["lang"], m["body"], m["mark"])
        for m in FENCE.finditer(text)
    ]


ALL = [b for file in DOCS for b in blocks(file)]


def test_every_block_is_known():
    """Each block is one this file runs: a language it knows, and a known mark."""
    assert ALL, "no fenced examples found"
    for b in ALL:
        where = f"{b.file.name}:{b.line}"
        assert b.lang in ("bash", "python", "json"), f"{where}: fence without a runnable language: '{b.lang}'"
        assert b.mark is None or b.mark in ("ci", "response") or b.mark.startswith("network; offline twin: "), where
        assert b.lang != "json" or b.mark == "response", f"{where}: a json block must be marked as a response"


def test_setup_block_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    setup = [b for b in ALL if b.mark == "ci"]
    assert setup, "README's set-up block is not marked"
    for b in setup:
        for line in b.body.splitlines():
            command = line.split("#", 1)[0].strip()
            if command:
                assert command in ci, f"{b.file.name}:{b.line}: CI does not run `{command}`"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reader_files(home: Path, cwd: Path) -> None:
    """The files the examples name, made of the bundled model's world so that results mean something."""
    pictures = export_folder(home / "Pictures", seed=31, n=48)
    make_item(31, 48).image.convert("RGB").save(pictures / "some-photo.jpg", quality=92)
    export_folder(home / "labelled-photos", seed=32, n=96)
    (home / "labelled-photos" / "captions.jsonl").unlink()
    make_item(33, 0).image.convert("RGB").save(cwd / "photo.jpg", quality=92)
    captions = [json.loads(line) for line in (pictures / "captions.jsonl").read_text().splitlines()]
    (cwd / "captions.jsonl").write_text("".join(json.dumps({"text": c["text"]}) + "\n" for c in captions[:60]))
    (cwd / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")


PRELUDE = r"""
set -euo pipefail
cgx() { "$CGX_PYTHON" -m crossgap_index "$@"; }
curl() { command curl --fail-with-body --retry 0 "$@"; echo; }
declare -A serving=()  # port -> pid of the `cgx serve` on it
trap 'for p in "${serving[@]}"; do kill "$p" 2>/dev/null || true; done; wait' EXIT
serve_on() {  # a reader stops the `cgx serve` holding a terminal before starting another on its port
    local port="$1"; shift
    if [ -n "${serving[$port]:-}" ]; then kill "${serving[$port]}"; wait "${serving[$port]}" || true; fi
    "$@" &
    serving[$port]=$!
    wait_port "$port"
}
wait_port() {
    for _ in $(seq 600); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.2
    done
    echo "server on port $1 did not start" >&2; return 1
}
"""


def session_script(file_blocks: list[Block]) -> str:
    """The file's bash blocks as one script, with the mechanical changes the module docstring lists."""
    text = "\n".join(_twin(b) for b in file_blocks)
    ports: dict[str, int] = {}
    for line in text.splitlines():
        if line.lstrip().startswith("cgx serve"):
            named = SERVE_PORT.search(line)
            ports.setdefault(named.group(1) if named else "8000", free_port())
    for old, new in ports.items():
        text = re.sub(rf"(?<=[:\s]){old}\b", str(new), text)
    lines = []
    for line in text.splitlines():
        if line.lstrip().startswith("cgx serve"):
            command = line.split("#", 1)[0].rstrip()
            port = SERVE_PORT.search(command)
            port = int(port.group(1)) if port else ports["8000"]
            if "--port" not in command:
                command += f" --port {port}"
            args = command.strip().removeprefix("cgx")  # the server itself in the background, not a subshell
            line = f'serve_on {port} "$CGX_PYTHON" -m crossgap_index{args}'
        lines.append(line)
    return PRELUDE + "\n".join(lines) + "\n"


def _twin(b: Block) -> str:
    if b.mark and b.mark.startswith("network; offline twin: "):
        old, new = (part.strip() for part in b.mark.removeprefix("network; offline twin: ").split("->"))
        assert old in b.body, f"{b.file.name}:{b.line}: the twin's '{old}' is not in the block"
        return b.body.replace(old, new)
    return b.body


def run_session(file: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    home, cwd = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    cwd.mkdir()
    reader_files(home, cwd)
    script = session_script([b for b in blocks(file) if b.lang == "bash" and b.mark != "ci"])
    env = {
        **os.environ,
        "HOME": str(home),
        "CGX_PYTHON": sys.executable,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "CGX_INDEX": str(home / "photos.cgx"),  # the page's own `export` sets it again where it says so
    }
    env.pop("CGX_MODEL", None)
    if file.name == "serve.md":  # its examples search an index the README made: make one the same way
        subprocess.run(
            [
                sys.executable,
                "-m",
                "crossgap_index",
                "build-index",
                home / "Pictures",
                "--model",
                "crossgap-small",
                "-q",
            ],
            env=env,
            check=True,
            cwd=cwd,
        )
        subprocess.run(
            [sys.executable, "-m", "crossgap_index", "add-texts", cwd / "captions.jsonl", "-q"],
            env=env,
            check=True,
            cwd=cwd,
        )
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)


@pytest.mark.parametrize("file", [f for f in DOCS if any(b.lang == "bash" for b in blocks(f))], ids=lambda f: f.name)
def test_bash_blocks_run_as_one_session(file, tmp_path):
    result = run_session(file, tmp_path)
    assert result.returncode == 0, f"{file.name}: exit {result.returncode}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    if file.name == "serve.md":  # the response blocks: a real response has the fields they show
        shown = [json.loads(b.body) for b in blocks(file) if b.mark == "response"]
        real = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{"hits"')]
        assert shown and real
        for doc in shown:
            assert set(doc) == set(real[0])
            assert set(doc["hits"][0]) <= set(real[0]["hits"][0]) | {"text", "external_id"}


@pytest.mark.parametrize("block", [b for b in ALL if b.lang == "python"], ids=lambda b: f"{b.file.name}:{b.line}")
def test_python_blocks_run_as_written(block, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", block.body], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip(), "the example prints its results"
