"""The CPU compare-pair benchmark (``python -m bench cpu``): its table from raw records, and a tiny end-to-end run."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import cpu_pair
from bench.cpu_worker import SidesteerPair
from tests.conftest import build_tiny_checkpoint


def call(round_index: int, candidate: str, kind: str, steer: str, pair_s: float, ttft: list[float], **extra) -> dict:
    record = {"round": round_index, "candidate": candidate, "call": kind, "steer": steer, "load": 1.0}
    return {**record, "pair_s": pair_s, "ttft_s": ttft, **extra}


SAME_SPEC = {"spec_changed": False, "prompt_changed": True}
NEW_SPEC = {"spec_changed": True, "prompt_changed": True}


RAW = {
    "model": "default",
    "rounds": 2,
    "tokens": 64,
    "cpus": 2,
    "starts": {"hf-fp32-t1": {"start_s": 3.25, "load": 0.5}, "llamacpp-ref-t2": {"start_s": 0.5, "load": 0.5}},
    "calls": [
        call(0, "hf-fp32-t1", "none", "none", 10.0, [0.5, 0.4], **NEW_SPEC),
        call(0, "hf-fp32-t1", "steered", "add_cap", 10.5, [0.5, 0.6], load=2.0, spec_changed=True, prompt_changed=False),
        call(0, "hf-fp32-t1", "again", "add_cap", 1.0, [0.2, 0.25], **SAME_SPEC),
        call(1, "hf-fp32-t1", "steered", "add_cap", 9.0, [0.3, 0.35], **SAME_SPEC),
        call(1, "hf-fp32-t1", "none", "none", 10.0, [0.3, 0.3], spec_changed=True, prompt_changed=False),
        call(1, "hf-fp32-t1", "again", "add_cap", 1.0, [0.2, 0.4], **NEW_SPEC),
        call(0, "llamacpp-ref-t2", "none", "none", 2.0, [0.2, 1.2]),
        call(0, "llamacpp-ref-t2", "steered", "add", 2.5, [0.2, 1.3]),
        call(1, "llamacpp-ref-t2", "none", "none", 2.1, [0.2, 1.2]),
        call(1, "llamacpp-ref-t2", "steered", "add", 2.3, [0.2, 1.1]),
    ],
}


def test_table_gives_medians_steering_cost_and_ratio_to_llama_cpp() -> None:
    lines = cpu_pair.markdown(RAW).splitlines()
    assert lines[0] == (
        "64 + 64 tokens, greedy, model `default`, 2 interleaved rounds, 2 CPUs; "
        "1-minute load average during the timed calls 1.0-2.0."
    )
    # hf: steered median (10.5, 9.0) = 9.75 (the "again" pairs are not steered pairs of the cost); ratios 1.05, 0.9 ->
    # median 0.975 = -2.5%; 9.75 / 2.4 = 4.06x; TTFT of steered pairs under an unchanged spec on a new prompt: round 0's
    # "again" and round 1's "steered" (after round 0's "again"), median of (0.25, 0.35); after a spec change (0.6, 0.4)
    assert lines[-2] == (
        "| transformers fp32, 1 thread (`--backend hf`, or auto without llama.cpp) | 3.2 | 9.75 (9.00-10.50) | 10.00 | "
        "0.300 | 0.500 | -2.5% (add+cap) | 4.06x | 1.0 |"
    )
    # llama.cpp: steered with an add (it cannot cap); ratios 1.25, 2.3 / 2.1 -> median 1.1726 = +17.3%; records without
    # the changed flags (older runs) count every steered pair as a new spec
    assert lines[-1] == (
        "| llama.cpp Q4_1 GGUF, 2 threads (reference) | 0.5 | 2.40 (2.30-2.50) | 2.05 | - | 1.200 | +17.3% (add) | 1.00x | 1.0 |"
    )


def test_unknown_candidate_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cpu_pair.main(["--candidates", "hf-fp64"])
    assert "--candidates: unknown ['hf-fp64']" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint("llama")


def test_candidates_steer_with_what_their_backend_can_steer() -> None:
    assert cpu_pair.steers(cpu_pair.CANDIDATES["hf-fp32-t1"]) == ("none", "add_cap")
    assert {cpu_pair.steers(c) for n, c in cpu_pair.CANDIDATES.items() if n.startswith("llamacpp")} == {("none", "add")}
    assert set(cpu_pair.DEFAULT) <= set(cpu_pair.CANDIDATES)


def test_missing_packages_skip_their_candidates_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    real = cpu_pair.importlib.util.find_spec
    monkeypatch.setattr(cpu_pair.importlib.util, "find_spec", lambda name: None if name == "llama_cpp" else real(name))
    assert cpu_pair.unavailable("llamacpp-ref-t1") == "llama_cpp is not installed"
    assert cpu_pair.unavailable("llamacpp-2x1") == "llama_cpp is not installed"
    assert cpu_pair.unavailable("hf-fp32-t1") is None


def test_worker_streams_both_panes_of_the_pair(tiny_model: Path) -> None:
    runner = SidesteerPair({"backend": "hf", "model": str(tiny_model), "dtype": "float32", "threads": None})
    for steer in cpu_pair.STEERS:
        result = runner.pair(steer, 3)
        assert result["tokens"] == [3, 3]
        assert 0 < max(result["ttft_s"]) <= result["pair_s"]


def test_benchmark_runs_a_candidate_in_its_own_process(tiny_model: Path) -> None:
    raw = cpu_pair.run_benchmark(["hf-fp32-t1"], str(tiny_model), rounds=2, tokens=2)
    assert [(c["candidate"], c["round"], c["tokens"]) for c in raw["calls"]] == [
        ("hf-fp32-t1", r, [2, 2]) for r in (0, 0, 0, 1, 1, 1)
    ]
    # per round: unsteered and steered on a new prompt (random order), then steered again on another; the same prompts
    # for every candidate
    for calls in (raw["calls"][:3], raw["calls"][3:]):
        assert sorted(c["call"] for c in calls[:2]) == ["none", "steered"] and calls[2]["call"] == "again"
        assert [c["steer"] for c in calls] == ["none" if c["call"] == "none" else "add_cap" for c in calls]
    p = cpu_pair.PROMPTS
    assert [c["prompt"] for c in raw["calls"]] == [p[0], p[0], p[1], p[2], p[2], p[3]]
    previous = [("none", cpu_pair.WARM_UP)] + [(c["steer"], c["prompt"]) for c in raw["calls"][:-1]]
    assert [(c["spec_changed"], c["prompt_changed"]) for c in raw["calls"]] == [
        (c["steer"] != steer, c["prompt"] != prompt) for c, (steer, prompt) in zip(raw["calls"], previous, strict=True)
    ]
    assert list(raw["starts"]) == ["hf-fp32-t1"] and raw["starts"]["hf-fp32-t1"]["start_s"] > 0


@pytest.mark.slow
@pytest.mark.skipif(cpu_pair.unavailable("llamacpp-ref-t1") is not None, reason="llama-cpp-python is not installed")
def test_llamacpp_reference_and_backend_time_the_same_greedy_pair() -> None:
    from bench.cpu_worker import LlamaCppPair

    reference = LlamaCppPair({"backend": "llamacpp-ref", "model": "default", "threads": 1})
    backend = SidesteerPair({"backend": "llamacpp", "model": "default", "dtype": "q4_1", "threads": 1, "parallel": 2})
    for runner in (reference, backend):
        for steer in ("none", "add"):
            result = runner.pair(steer, 3)
            assert result["tokens"] == [3, 3]
            assert 0 < min(result["ttft_s"]) <= max(result["ttft_s"]) <= result["pair_s"]
