"""Every command in README.md is true: each ```bash / ```sh / ```python block runs here or says why not.

A block may carry one HTML comment on the line right before it:

- ``<!-- no-test: REASON -->``: never run (it serves forever, changes the environment, downloads a model...);
- ``<!-- gpu-only -->``: run only where a CUDA GPU is present (``<!-- gpu-only: N GPUs -->``: where N are);
- ``<!-- slow -->``: run under the ``slow`` marker;
- ``<!-- needs-app: ... -->``: a client of a running ``python app.py`` (its URL replaces ``http://127.0.0.1:7860/``).

Shell commands run from the checkout root (where the README's commands are typed) with the project venv first on
``PATH``; a command that starts the app is started, waited for until it logs its URL, asked for its page and stopped
with Ctrl+C. Python blocks run in a fresh temporary folder with no ``PYTHONPATH``: the installed package, from any
folder. Nothing writes into the checkout (the app's user registry goes to a temporary folder).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LANGUAGES = ("bash", "sh", "python")
KINDS = ("no-test", "gpu-only", "slow", "needs-app")
DEFAULT_URL = "http://127.0.0.1:7860/"
START_TIMEOUT = 300  # loading the default model on a busy 2-core CPU
RUN_TIMEOUT = 600
STOP_TIMEOUT = 60  # Ctrl+C to exit (1.9 s measured)


@dataclass(frozen=True)
class Block:
    """One fenced code block of the README: its language, first line number, code and the comment before it."""

    language: str
    line: int
    code: str
    kind: str | None = None
    note: str = ""

    @property
    def id(self) -> str:
        return f"L{self.line}-{self.language}"


def readme_blocks(text: str) -> list[Block]:
    """Every fenced block of ``text`` (any language), with the ``<!-- kind[: note] -->`` comment right before it."""
    blocks, lines = [], text.splitlines()
    index = 0
    while index < len(lines):
        fence = re.fullmatch(r"```(\S*)\s*", lines[index])
        if not fence:
            index += 1
            continue
        end = next(j for j in range(index + 1, len(lines)) if lines[j].startswith("```"))
        comment = re.fullmatch(r"<!--\s*([\w-]+)\s*(?::\s*(.*?))?\s*-->", lines[index - 1].strip()) if index else None
        kind, note = (comment.group(1), comment.group(2) or "") if comment else (None, "")
        blocks.append(Block(fence.group(1), index + 1, "\n".join(lines[index + 1 : end]) + "\n", kind, note))
        index = end + 1
    return blocks


BLOCKS = [b for b in readme_blocks(README.read_text()) if b.language in LANGUAGES]


def commands(code: str) -> list[list[str]]:
    """The shell commands of a block: continuation lines joined, comments dropped, each split into words."""
    return [words for line in code.replace("\\\n", " ").splitlines() if (words := shlex.split(line, comments=True))]


def starts_the_app(words: list[str]) -> bool:
    return (words[:2] in (["python", "app.py"], ["sidesteer", "app"])) and "--help" not in words and "-h" not in words


def failure(out: subprocess.CompletedProcess) -> str:
    """What a failed block printed: stdout's tail, the first error lines of stderr (a vLLM engine's own traceback comes
    long before the driver's "Engine core initialization failed", past any tail), then stderr's tail."""
    first = [line for line in out.stderr.splitlines() if re.search(r"Error\b|Exception\b|Traceback", line)][:12]
    return "\n".join([out.stdout[-2000:], "-- first error lines of stderr:", *first, "-- stderr tail:", out.stderr[-4000:]])


def environment(tmp: Path, **extra: str) -> dict[str, str]:
    """The reader's shell: the project venv first on PATH, no PYTHONPATH, data folders in ``tmp``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith(("SIDESTEER_", "GRADIO_SERVER"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["SIDESTEER_DATA_DIR"] = str(tmp / "data")
    # One OpenMP thread unless told otherwise: these runs are tiny, and on a loaded 2-core machine two spinning
    # OpenMP threads per process made 2 x 8 tokens take 33-49 s instead of 3.5 s (measured).
    env.setdefault("OMP_NUM_THREADS", "1")
    return {**env, **extra}


class AppServer:
    """One ``python app.py``-style command serving on a free port until :meth:`stop` (Ctrl+C)."""

    def __init__(self, words: list[str], tmp: Path) -> None:
        from tests.test_app_support import free_port

        self.port = free_port()
        self.log = tmp / f"app-{self.port}.log"
        # faulthandler: an app that does not stop on Ctrl+C gets SIGABRT, which writes every thread's stack to the log
        env = environment(tmp, GRADIO_SERVER_PORT=str(self.port), PYTHONFAULTHANDLER="1")
        with self.log.open("w") as out:
            # Ctrl+C as a reader's terminal sends it: a test run started in the background by a script inherits SIGINT
            # ignored (bash does that to background jobs), and so would the app, which then never stops on it.
            self.process = subprocess.Popen(
                words,
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            )
        self.url = f"http://127.0.0.1:{self.port}/"
        deadline = time.monotonic() + START_TIMEOUT
        while f"serving on {self.url}" not in self.log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"{shlex.join(words)} did not start:\n{self.log.read_text()[-4000:]}")
            time.sleep(0.5)

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # Ctrl+C: the app closes its server and exits
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.send_signal(signal.SIGABRT)  # the threads' stacks go to the log (see __init__)
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        return self.process.returncode


@pytest.fixture(scope="module")
def apps(tmp_path_factory):
    """Apps started by the README's commands, one per command line, shared by the blocks that use them."""
    tmp = tmp_path_factory.mktemp("readme-apps")
    running: dict[str, AppServer] = {}

    def start(words: list[str]) -> AppServer:
        key = shlex.join(words)
        if key not in running:
            running[key] = AppServer(words, tmp)
        return running[key]

    yield start
    for server in running.values():
        assert server.stop() == 0, server.log.read_text()[-8000:]


def my_spec(folder: Path) -> None:
    """The spec file the API example imports: the shipped pirate vector at its suggested layer."""
    from vectors import SteeringSpec, VectorRegistry

    entry = VectorRegistry(ROOT / "registry" / "smollm2").get("pirate")
    SteeringSpec.single(entry.suggested_layer, entry.vector, 2.0, model_id=entry.model_id).save(folder / "my_spec.safetensors")


def marks(block: Block) -> list[pytest.MarkDecorator]:
    if block.kind == "no-test":
        return [pytest.mark.skip(reason=f"README says: {block.note}")]
    if block.kind == "gpu-only":
        import torch

        need = int(m.group(1)) if (m := re.fullmatch(r"(\d+) GPUs", block.note)) else 1
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [pytest.mark.skipif(have < need, reason=f"gpu-only block for {need} CUDA GPU(s); {have} here")]
    return [pytest.mark.slow] if block.kind in ("slow", "needs-app") or "HFSteerModel(" in block.code else []


# -- the README's own rules ------------------------------------------------------------------------------------------
def test_every_block_runs_or_says_why():
    assert [b.language for b in BLOCKS].count("python") >= 3 and [b.language for b in BLOCKS].count("bash") >= 4
    for block in readme_blocks(README.read_text()):
        assert block.language in (*LANGUAGES, "", "text", "json"), f"line {block.line}: unknown language {block.language!r}"
        assert block.kind in (None, *KINDS), f"line {block.line}: unknown marker <!-- {block.kind} -->; use one of {KINDS}"
        if block.kind == "no-test":
            assert len(block.note.split()) >= 3, f"line {block.line}: <!-- no-test: ... --> needs a reason"
        if block.kind == "gpu-only":
            assert re.fullmatch(r"(\d+ GPUs)?", block.note), (
                f"line {block.line}: write <!-- gpu-only --> or <!-- gpu-only: 2 GPUs -->"
            )
    run_here = [b for b in BLOCKS if b.kind not in ("no-test", "gpu-only")]
    assert {b.language for b in run_here} == {"bash", "python"}  # at least one of each actually runs on CPU


def test_readme_parser_reads_markers_and_commands():
    text = "x\n<!-- no-test: serves until stopped -->\n```bash\nmake run  # comment\nls \\\n  -l\n```\n```python\npass\n```\n"
    assert readme_blocks(text) == [
        Block("bash", 3, "make run  # comment\nls \\\n  -l\n", "no-test", "serves until stopped"),
        Block("python", 8, "pass\n"),
    ]
    assert commands(readme_blocks(text)[0].code) == [["make", "run"], ["ls", "-l"]]
    assert starts_the_app(["python", "app.py"]) and not starts_the_app(["python", "app.py", "--help"])


def test_a_failed_block_shows_its_first_error_past_the_tail():
    cause = "ValueError: Free memory on device (10.2/139.8 GiB) is less than desired GPU memory utilization (0.9)"
    stderr = "\n".join(
        ["INFO starting", cause, *(f"INFO line {i}" for i in range(400)), "RuntimeError: Engine core initialization failed"]
    )
    text = failure(subprocess.CompletedProcess([], 1, "out", stderr))
    assert cause not in stderr[-4000:] and text.splitlines()[:3] == ["out", "-- first error lines of stderr:", cause]
    assert text.endswith("RuntimeError: Engine core initialization failed")


# -- the blocks --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("block", [pytest.param(b, id=b.id, marks=marks(b)) for b in BLOCKS])
def test_readme_block(block: Block, apps, tmp_path):
    if block.language == "python":
        code = block.code
        if block.kind == "needs-app":
            code = code.replace(DEFAULT_URL, apps(["python", "app.py"]).url)
            my_spec(tmp_path)
        script = tmp_path / "block.py"
        script.write_text(code)
        out = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=environment(tmp_path),
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
        )
        assert out.returncode == 0, f"README line {block.line}:\n{failure(out)}"
        return
    for words in commands(block.code):
        if starts_the_app(words):
            server = apps(words)
            page = httpx.get(server.url, timeout=60)
            assert page.status_code == 200 and "gradio" in page.text
            continue
        out = subprocess.run(words, cwd=ROOT, env=environment(tmp_path), capture_output=True, text=True, timeout=RUN_TIMEOUT)
        assert out.returncode == 0, f"README line {block.line}: {shlex.join(words)}\n{failure(out)}"
