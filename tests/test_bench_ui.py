"""The UI streaming benchmark (``python -m bench ui``): its table from raw records, the docs section, bad arguments,
and a tiny end-to-end run (the app in its own process on a tiny model) whose records must agree across paths."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from bench import ui_stream
from bench.__main__ import main as bench_main
from bench.ui_browser import DONE, tokens_in
from tests.conftest import build_tiny_checkpoint
from vectors import SteeringError, VectorRegistry


def call(round_index: int, path: str, total: float, ttft: list[float], tokens: list[int], cpu: tuple, load: float = 1.0) -> dict:
    return {
        "round": round_index,
        "path": path,
        "load_before": load,
        "load_after": load + 0.5,
        "ttft_s": ttft,
        "total_s": total,
        "texts": ["a", "b"],
        "tokens": tokens,
        "cpu_s": dict(zip(("bench", "app", "browser"), cpu, strict=True)),
        "same_as_direct": path != "browser" or round_index == 0,
    }


RAW = {
    "backend": "hf",
    "model": "default",
    "vector": "pirate",
    "layer": 8,
    "scale": 2.0,
    "tokens": 11,
    "seed": 0,
    "rounds": 2,
    "paths": ["direct", "client", "browser"],
    "torch_threads": 1,
    "omp_wait_policy": "PASSIVE",
    "cpus": 2,
    "cpu": "Test CPU",
    "loads_start": [1.0, 2.0, 3.0],
    "loads_end": [1.5, 2.5, 3.5],
    "command": "python -m bench ui --tokens 11 --rounds 2",
    "calls": [
        call(0, "direct", 10.0, [0.5, 0.6], [11, 11], (10.0, 0.1, 0.0)),
        call(0, "client", 11.0, [0.7, 0.8], [11, 11], (0.4, 10.6, 0.0)),
        call(0, "browser", 12.0, [0.9, 1.0], [11, 11], (0.1, 10.5, 2.0), load=2.0),
        call(1, "browser", 11.0, [0.9, 0.8], [11, 11], (0.1, 9.5, 1.4)),
        call(1, "direct", 9.0, [0.4, 0.5], [11, 9], (9.0, 0.1, 0.0)),
        call(1, "client", 9.5, [0.5, 0.5], [11, 9], (0.3, 9.5, 0.0), load=3.0),
    ],
}


def test_table_pairs_each_path_with_the_direct_call_of_its_round() -> None:
    lines = ui_stream.markdown(RAW).splitlines()
    assert lines[0].startswith('11 new tokens per pane, greedy (seed 0), prompt "Tell me about your weekend.", vector `pirate` ')
    assert "Load average (1, 5, 15 min) 1.00, 2.00, 3.00 at start, 1.50, 2.50, 3.50 at end" in lines[0]
    assert "1-minute load around the timed calls 1.00-3.50" in lines[0]
    assert lines[0].endswith("Command: `python -m bench ui --tokens 11 --rounds 2`.")
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| path")]
    labels = [row.split(" | ")[0] for row in rows]
    assert labels == ["| engine `generate_stream`, no UI", "| app `/compare` via gradio_client", "| app in Chromium (DOM)"]
    assert rows[0] == (
        "| engine `generate_stream`, no UI | 0.450 (0.400 to 0.500) | 0.550 (0.500 to 0.600) | 9.50 (9.00 to 10.00) | "
        "11, 9; 11, 11 | - | - | 9.50 / 0.10 / 0.00 | - | - | 2/2 | 1.00 |"
    )
    # client, round 0: (11 - 10) / 11 steps = +90.9 ms, +10%; CPU (11.0 - 10.1) / 11 = +81.8 ms, 11.0 / 10.1 = +8.9%
    #         round 1: (9.5 - 9) / 11 = +45.5 ms, +5.6%;    CPU (9.8 - 9.1) / 11 = +63.6 ms, 9.8 / 9.1 = +7.7%
    assert rows[1] == (
        "| app `/compare` via gradio_client | 0.600 (0.500 to 0.700) | 0.650 (0.500 to 0.800) | 10.25 (9.50 to 11.00) | "
        "11, 9; 11, 11 | +68.2 (+45.5 to +90.9) | +7.8% (+5.6 to +10.0) | 0.35 / 10.05 / 0.00 | +72.7 (+63.6 to +81.8) "
        "| +8.3% (+7.7 to +8.9) | 2/2 | 2.00 |"
    )
    # browser, round 0: +2 s / 11 = +181.8 ms, +20%;   CPU (12.6 - 10.1) / 11 = +227.3 ms, 12.6 / 10.1 = +24.8%
    #          round 1: +2 s / 11 = +181.8 ms, +22.2%; CPU (11.0 - 9.1) / 11 = +172.7 ms, 11.0 / 9.1 = +20.9%
    #          and its output differs from the direct path's
    assert rows[2] == (
        "| app in Chromium (DOM) | 0.900 (0.900 to 0.900) | 0.900 (0.800 to 1.000) | 11.50 (11.00 to 12.00) | 11, 11 "
        "| +181.8 (+181.8 to +181.8) | +21.1% (+20.0 to +22.2) | 0.10 / 10.00 / 1.70 | +200.0 (+172.7 to +227.3) "
        "| +22.8% (+20.9 to +24.8) | 1/2 | 1.50 |"
    )


def test_write_docs_adds_the_section_once_and_then_replaces_only_the_table(tmp_path: Path) -> None:
    docs = tmp_path / "BENCHMARKS.md"
    docs.write_text("# Benchmarks\n\n## CPU compare pair\n\ncpu text\n\n## Quantized\n\nq text\n")
    ui_stream.write_docs("| first |\n", docs)
    assert docs.read_text() == (
        "# Benchmarks\n\n## CPU compare pair\n\ncpu text\n\n## UI streaming overhead (CPU)\n\n"
        f"{ui_stream.DOCS_BEGIN}\n| first |\n{ui_stream.DOCS_END}\n\n## Quantized\n\nq text\n"
    )
    edited = docs.read_text().replace(ui_stream.DOCS_END, ui_stream.DOCS_END + "\n\nReading it: by hand.")
    docs.write_text(edited)
    ui_stream.write_docs("| second |\n", docs)
    assert docs.read_text() == edited.replace("| first |", "| second |")


def test_write_docs_appends_where_the_cpu_section_is_missing(tmp_path: Path) -> None:
    docs = tmp_path / "BENCHMARKS.md"
    docs.write_text("# Benchmarks\n\nintro\n")
    ui_stream.write_docs("| t |", docs)
    assert docs.read_text() == (
        f"# Benchmarks\n\nintro\n\n## UI streaming overhead (CPU)\n\n{ui_stream.DOCS_BEGIN}\n| t |\n{ui_stream.DOCS_END}\n\n"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--paths", "direct,curl"], "--paths: unknown ['curl']; choose from direct, client, browser"),
        (["--rounds", "0"], "--rounds: 0 is not a positive number of rounds; pass e.g. --rounds 5"),
        (["--tokens", "-1"], "--tokens: -1 is not a positive number of tokens; pass e.g. --tokens 64"),
        (["--registry", "/nonexistent/registry"], "--registry: /nonexistent/registry is not a folder"),
        (["--backend", "tgi"], "--backend: 'tgi' is not one of the app's backends (auto, vllm, hf"),
    ],
)
def test_bad_arguments_are_named(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench_main(["ui", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_stats_lines_give_token_counts_and_end_states() -> None:
    import re

    assert tokens_in("64 tokens · 9.1 s · 7.0 tok/s · hit max tokens  \nsteered: pirate") == 64
    assert re.search(DONE, "12 tokens · 1.0 s · 12.0 tok/s · finished")
    assert not re.search(DONE, "3 tokens · 0.4 s · 7.5 tok/s · generating…")
    with pytest.raises(ValueError, match="states no token count"):
        tokens_in("waiting for the model…")


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny random model and a registry with one vector ``up`` for it (a name the shipped registry does not hold)."""
    model = build_tiny_checkpoint("llama")
    registry = VectorRegistry(tmp_path_factory.mktemp("registry"))
    vector = torch.randn(128, generator=torch.Generator().manual_seed(0)) * 4.0
    registry.add("up", vector, suggested_layer=1, extra={"suggested_scale": 3.0})
    return model, registry.root


def check_run(raw: dict, paths: list[str], rounds: int, tokens: int) -> None:
    """Every path ran once per round with the direct path's tokens and texts, and its times are ordered."""
    assert raw["paths"] == paths and (raw["layer"], raw["scale"]) == (1, 3.0)
    assert sorted((c["round"], c["path"]) for c in raw["calls"]) == sorted((r, p) for r in range(rounds) for p in paths)
    direct = next(c for c in raw["calls"] if c["path"] == "direct")
    assert direct["tokens"] == [tokens, tokens]  # no row of this seeded model ends early
    assert direct["texts"][0] != direct["texts"][1]  # the steered row was steered
    for c in raw["calls"]:
        assert c["same_as_direct"] and (c["tokens"], c["texts"]) == (direct["tokens"], direct["texts"])
        assert 0 < max(c["ttft_s"]) <= c["total_s"]
        assert set(c["cpu_s"]) == {"bench", "app", "browser"} and min(c["cpu_s"].values()) >= 0
        assert c["cpu_s"]["bench" if c["path"] == "direct" else "app"] > 0  # where the engine ran
    table = ui_stream.markdown(raw)
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| path")]
    assert [row.split(" | ")[0][2:] for row in rows] == [ui_stream.PATH_LABELS[p] for p in paths]
    assert [row.split(" | ")[-2] for row in rows] == [f"{rounds}/{rounds}"] * len(paths)  # same output as direct


def run_and_check_tiny(tiny_setup: tuple[Path, Path], paths: list[str]) -> None:
    """One round of 3 tokens over ``paths`` on the tiny model and vector ``up``; its log goes to stderr (shown when a
    test fails, with the app log's tail)."""
    model, registry = tiny_setup
    raw = ui_stream.run_benchmark(
        paths,
        model=str(model),
        vector="up",
        registry=registry,
        rounds=1,
        tokens=3,
        log=lambda line: print(line, file=sys.stderr),
    )
    check_run(raw, paths, rounds=1, tokens=3)


def test_tiny_run_through_the_app_api_agrees_with_the_engine(tiny_setup: tuple[Path, Path]) -> None:
    run_and_check_tiny(tiny_setup, ["direct", "client"])


@pytest.mark.browser
def test_tiny_run_in_the_browser_agrees_with_the_engine(tiny_setup: tuple[Path, Path]) -> None:
    pytest.importorskip("playwright.sync_api")
    from bench.ui_browser import CHROMIUM

    if not Path(CHROMIUM).exists():
        pytest.skip("system chromium is not installed (apt-get install chromium)")
    run_and_check_tiny(tiny_setup, ["direct", "browser"])


def test_a_vector_without_suggested_scale_is_refused(tiny_setup: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = tiny_setup
    VectorRegistry(tmp_path).add("bare", torch.ones(128), suggested_layer=1)
    with pytest.raises(SteeringError, match=r"--vector: 'bare' has no suggested layer and scale; pick a vector that has both"):
        ui_stream.DirectPath("hf", str(model), tmp_path, "bare", tokens=2, seed=0)


@pytest.mark.browser
def test_the_browser_path_types_in_a_slider_value_the_page_does_not_show(
    tiny_setup: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Layer 2 is not vector up's default (1): typed in after the settle wait; layer 9 the page snaps to 3: named."""
    pytest.importorskip("playwright.sync_api")
    from bench import ui_browser

    if not Path(ui_browser.CHROMIUM).exists():
        pytest.skip("system chromium is not installed (apt-get install chromium)")
    model, registry = tiny_setup
    monkeypatch.setattr(ui_browser, "SETTLE_TIMEOUT_MS", 1_000)
    server = ui_stream.AppServer("hf", str(model), registry, tmp_path / "app.log")
    browser = None
    try:
        browser = ui_browser.BrowserPath(server.url, "up", layer=2, scale=3.0, tokens=3)
        page = browser.browser.new_page()
        browser._prepare(page)
        shown = [page.locator(f"#{name} input[type=number]").input_value() for name in ("layer", "scale", "max-new-tokens")]
        assert shown == ["2", "3", "3"]
        page.set_default_timeout(3_000)  # the page is loaded: the typed-in 9 snaps to 3 within this
        with pytest.raises(RuntimeError) as exc:
            browser._settle(page, "layer", 9.0)
        assert str(exc.value) == (
            "browser path: the page's layer stays '3', not 9, after typing it in "
            "(the page shows {'vector': 'up', 'layer': '3', 'scale': '3'}); see the app log"
        )
    finally:
        if browser is not None:
            browser.close()
        server.close()
