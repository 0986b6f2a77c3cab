"""The benchmark's statistics, tables, flags and worker timers, without an engine (bench/)."""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.stats import engine_ratio, paired_interval
from bench.table import interval_text

ROOT = Path(__file__).resolve().parent.parent


def test_interval_of_identical_ratios_is_a_point():
    assert paired_interval([0.98, 0.98, 0.98]) == pytest.approx((0.98, 0.98, 0.98))


def test_interval_is_the_t_interval_on_logs():
    ratios = [1.1, 0.9, 1.0]
    logs = [math.log(r) for r in ratios]
    half = 4.303 * statistics.stdev(logs) / math.sqrt(3)  # t(0.975, df=2)
    geo, lo, hi = paired_interval(ratios)
    assert geo == pytest.approx(math.exp(statistics.fmean(logs)))
    assert (lo, hi) == pytest.approx((math.exp(statistics.fmean(logs) - half), math.exp(statistics.fmean(logs) + half)))
    assert lo < geo < hi


def test_interval_narrows_with_more_rounds_of_the_same_spread():
    few = paired_interval([0.95, 1.05] * 2)
    many = paired_interval([0.95, 1.05] * 20)
    assert many[2] - many[1] < (few[2] - few[1]) / 3


def test_one_round_has_no_interval_and_bad_ratios_are_refused():
    geo, lo, hi = paired_interval([0.97])
    assert geo == pytest.approx(0.97) and math.isnan(lo) and math.isnan(hi)
    assert interval_text([0.97]) == "97.0"
    assert interval_text([0.96, 0.98, 0.97]) == "97.0 [94.5, 99.5]"
    for bad in ([], [1.0, 0.0], [1.0, -0.5]):
        with pytest.raises(ValueError, match="paired ratios must be positive"):
            paired_interval(bad)


def test_engine_ratio_pools_every_steered_configuration_per_round():
    result = {
        "samples_tok_s": {
            "unsteered": [100.0, 200.0],
            "unsteered_aa_control": [100.0, 200.0],
            "idle": [90.0, 180.0],
            "one_layer": [90.0, 180.0],
        }
    }
    g, lo, hi, n = engine_ratio(result)
    assert n == 2 and (g, lo, hi) == pytest.approx((0.9, 0.9, 0.9))
    result["samples_tok_s"]["one_layer"] = [40.0, 320.0]  # geometric means per round: 60 / 100, 240 / 200
    g, lo, hi, _ = engine_ratio(result)
    assert g == pytest.approx(math.sqrt(0.6 * 1.2)) and lo < g < hi
    with pytest.raises(ValueError, match="no steered-engine configuration"):
        engine_ratio({"samples_tok_s": {"unsteered": [1.0], "unsteered_aa_control": [1.0]}})


def test_summarize_steps_splits_a_span_into_worker_and_outside_time():
    from bench.kernel_timer import summarize_steps

    calls = {"execute_model": [(0.000, 0.002), (0.010, 0.013)], "sample_tokens": [(0.002, 0.003), (0.013, 0.014)]}
    out = summarize_steps(calls, [(640, 10), (10, 10)])
    assert out["steps"] == 2 and out["scheduled_tokens"] == 650
    assert out["max_batch_reqs"] == 10 and out["mean_batch_reqs"] == pytest.approx(10.0)
    assert out["execute_model_ms"] == pytest.approx(5.0) and out["sample_tokens_ms"] == pytest.approx(2.0)
    assert out["in_worker_ms"] == pytest.approx(7.0) and out["span_ms"] == pytest.approx(14.0)
    assert out["outside_ms"] == pytest.approx(7.0) and out["outside_ms_per_step"] == pytest.approx(3.5)
    assert summarize_steps({})["steps"] == 0 and summarize_steps({})["scheduled_tokens"] == 0


def test_benchmark_refuses_a_malformed_engine_arg_before_starting_engines(tmp_path):
    from bench import run

    argv = ["--model", "random:qwen3-tiny", "--work-dir", str(tmp_path), "--engine-arg", "async_scheduling"]
    with pytest.raises(SystemExit, match="--engine-arg: 'async_scheduling' is not KEY=VALUE"):
        run.main(argv)


def test_bench_table_refuses_a_file_that_is_not_a_benchmark_result():
    from bench import table as bench_table

    parity = Path(__file__).resolve().parent.parent / "docs" / "bench" / "h100-parity-qwen3-tiny-fp32.json"
    with pytest.raises(SystemExit, match=r"h100-parity-qwen3-tiny-fp32.json: not a benchmark result \(no samples_tok_s\)"):
        bench_table.main([str(parity)])
    with pytest.raises(SystemExit, match="not a benchmark result"):
        bench_table.main(["--pool", str(parity)])


def test_step_timer_leaves_empty_steps_out_of_the_span_and_the_counts():
    import time

    from bench.kernel_timer import StepTimerMixin

    class Worker(StepTimerMixin):
        def execute_model(self, so):
            time.sleep(0.002)
            return so.total_num_scheduled_tokens

        def sample_tokens(self, grammar=None):
            return "sampled"

    w = Worker()
    assert w.steer_step_time_begin() is True

    def step(tokens, reqs):
        return SimpleNamespace(total_num_scheduled_tokens=tokens, num_scheduled_tokens=dict.fromkeys(range(reqs), 1))

    assert w.execute_model(step(0, 0)) == 0 and w.sample_tokens() == "sampled"  # an empty step, then its sampling
    time.sleep(0.05)  # the gap between the empty step and the call: must not count
    assert w.execute_model(step(64, 4)) == 64 and w.sample_tokens() == "sampled"
    assert w.execute_model(step(4, 4)) == 4 and w.sample_tokens() == "sampled"
    out = w.steer_step_time_end()
    assert out["steps"] == 2 and out["empty_steps"] == 1 and out["scheduled_tokens"] == 68 and out["max_batch_reqs"] == 4
    assert out["span_ms"] < 40  # two ~2 ms steps, not the 50 ms since the empty one
    assert "execute_model" not in w.__dict__ and "sample_tokens" not in w.__dict__  # the class methods are back


def test_step_timer_reports_the_steering_update_time_of_the_timed_steps_only():
    from bench.kernel_timer import KernelTimerExtension
    from bench.worker_ext import BenchSteeringExtension

    state = SimpleNamespace(update_s=1.5, update_calls=40)  # a WorkerSteering's public counters after earlier calls

    class Worker(BenchSteeringExtension):
        def __init__(self):
            self.model_runner = SimpleNamespace(_sidesteer=state)

        def execute_model(self, so):
            state.update_s += 0.002  # what WorkerSteering.update adds up per step
            state.update_calls += 1
            return so.total_num_scheduled_tokens

    w = Worker()
    w.steer_step_time_begin()
    for _ in range(3):
        w.execute_model(SimpleNamespace(total_num_scheduled_tokens=8, num_scheduled_tokens={"a": 8}))
    out = w.steer_step_time_end()
    assert out["steer_update_calls"] == 3 == out["steps"] and out["steer_update_ms"] == pytest.approx(6.0)
    w.model_runner = SimpleNamespace()  # a runner without steering state: no field
    w.steer_step_time_begin()
    assert "steer_update_ms" not in w.steer_step_time_end()

    class PlainWorker(KernelTimerExtension):  # the plain engine's extension never reports one
        model_runner = SimpleNamespace(_sidesteer=state)

        def execute_model(self, so):
            return so.total_num_scheduled_tokens

    plain = PlainWorker()
    plain.steer_step_time_begin()
    plain.execute_model(SimpleNamespace(total_num_scheduled_tokens=8, num_scheduled_tokens={"a": 8}))
    assert "steer_update_ms" not in plain.steer_step_time_end()


def test_summarize_timeline_unions_kernels_and_splits_idle_gaps():
    from bench.kernel_timer import summarize_timeline

    # two overlapping kernels (0-10, 5-12), a 3 us launch gap, a kernel 15-20, a 100 us wait, a kernel 120-130
    out = summarize_timeline([(120.0, 130.0), (0.0, 10.0), (5.0, 12.0), (15.0, 20.0)])
    assert out == {
        "busy_us": 12.0 + 5.0 + 10.0,
        "span_us": 130.0,
        "idle_short_us": 3.0,
        "idle_long_us": 100.0,
        "gaps_short": 1,
        "gaps_long": 1,
    }
    assert summarize_timeline([])["busy_us"] == 0.0


def test_device_intervals_reads_a_profiler_timeline():
    import torch
    from torch.profiler import ProfilerActivity, profile

    from bench.kernel_timer import device_intervals, summarize_timeline

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        x = torch.randn(64, 64)
        (x @ x).sum()
    spans = device_intervals(prof, "cpu")
    assert len(spans) >= 3 and all(end >= start for start, end in spans)
    t = summarize_timeline(spans)
    assert 0 < t["busy_us"] <= t["span_us"]


def test_plain_generate_gives_each_prompt_its_own_params():
    from bench import measure

    seen = {}

    class FakeLLM:
        def generate(self, prompts, params, use_tqdm):
            seen["prompts"], seen["params"] = prompts, params
            return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=[1, 2, 3])]) for _ in prompts]

    n = measure.plain_generate(FakeLLM(), [[5, 6], [7]], ["A", "B"])
    assert n == 6 and seen == {"prompts": [{"prompt_token_ids": [5, 6]}, {"prompt_token_ids": [7]}], "params": ["A", "B"]}


def test_median_timeline_ms_takes_medians_and_converts_times_only():
    from bench import stats

    calls = [{"busy_us": 1000.0, "gaps_long": 3}, {"busy_us": 3000.0, "gaps_long": 5}, {"busy_us": 2000.0, "gaps_long": 4}]
    assert stats.median_timeline_ms(calls) == {"busy": 2.0, "gaps_long": 4}


def test_summarize_kernels_counts_only_device_events():
    from torch.autograd import DeviceType

    from bench.kernel_timer import summarize_kernels

    def ev(key: str, us: float, count: int, device: DeviceType) -> SimpleNamespace:
        return SimpleNamespace(key=key, self_device_time_total=us, count=count, device_type=device)

    events = [
        ev("gemm", 300.0, 10, DeviceType.CUDA),
        ev("cudaLaunchKernel", 999.0, 50, DeviceType.CPU),
        ev("triton_add", 20.5, 4, DeviceType.CUDA),
    ]
    out = summarize_kernels(events, top=1)
    assert out["kernel_us"] == pytest.approx(320.5)
    assert out["launches"] == 14
    assert out["top"] == [{"name": "gemm", "us": 300.0, "count": 10}]


def test_summarize_kernels_on_cpu_sums_operator_self_time():
    from torch.autograd import DeviceType

    from bench.kernel_timer import summarize_kernels

    events = [
        SimpleNamespace(key="aten::mm", self_cpu_time_total=50.0, count=2, device_type=DeviceType.CPU),
        SimpleNamespace(key="gemm", self_device_time_total=300.0, count=10, device_type=DeviceType.CUDA),
    ]
    out = summarize_kernels(events, top=None, device="cpu")
    assert (out["kernel_us"], out["launches"], out["device"]) == (50.0, 2, "cpu")


def test_no_hooks_keeps_only_the_unsteered_configurations_of_the_steered_engine():
    from bench.workload import configurations, select

    confs = configurations(4, 8, 3)
    assert list(confs) == ["idle", "one_layer", "every_layer_add_cap_ablate", "compare_half", "distinct_specs_2",
                           "distinct_specs_8", "distinct_specs_32", "sweep_51_scales"]  # fmt: skip
    assert confs["compare_half"][0] is None and confs["compare_half"][1] is confs["one_layer"][0]
    kept, diag, diag_steered = select(confs, None, no_hooks=True)
    assert (list(kept), diag, diag_steered) == (["idle"], True, False)
    kept, diag, diag_steered = select(confs, "idle,one_layer,one_layer_llm_generate", no_hooks=True)
    assert (list(kept), diag, diag_steered) == (["idle"], False, False)
    kept, diag, diag_steered = select(confs, "sweep_51_scales,one_layer_llm_generate", no_hooks=False)
    assert (list(kept), diag, diag_steered) == (["sweep_51_scales"], False, True)
    assert select(confs, None, no_hooks=False)[1:] == (True, True) and len(select(confs, None, False)[0]) == 8


def test_bench_is_one_entry_point_with_subcommands(capsys):
    """``python -m bench table`` and ``rollouts`` dispatch; every other argument list is the benchmark's flags."""
    from bench.__main__ import main

    parity = Path(__file__).resolve().parent.parent / "docs" / "bench" / "h100-parity-qwen3-tiny-fp32.json"
    with pytest.raises(SystemExit, match="not a benchmark result"):
        main(["table", str(parity)])
    with pytest.raises(SystemExit) as exit_info:
        main(["rollouts", "--help"])
    assert exit_info.value.code == 0 and "usage: python -m bench rollouts" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--pin-cpus: 'x' is not a CPU number or range"):
        main(["--pin-cpus", "x"])


def test_worker_extensions_resolve_and_do_not_clash_with_vllm_workers():
    """What vLLM does with ``worker_extension_cls`` in each worker (resolve by qualname, refuse a name the worker
    already has), for both engines of the benchmark, in a fresh process (resolving the steered one patches vLLM)."""
    pytest.importorskip("vllm")
    code = (
        "from vllm.utils.import_utils import resolve_obj_by_qualname as r\n"
        "from vllm.v1.worker.cpu_worker import CPUWorker\n"
        "from bench.engines import PLAIN, STEERED\n"
        "for q in (PLAIN, STEERED):\n"
        "    ext = r(q)\n"
        "    clash = [a for a in dir(ext) if not a.startswith('__') and hasattr(CPUWorker, a)]\n"
        "    print(ext.__name__, [k.__name__ for k in ext.__mro__[1:-1]], clash)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == [
        "KernelTimerExtension ['StepTimerMixin', 'HostProfilerMixin'] []",
        "BenchSteeringExtension ['SteeringWorkerExtension', 'KernelTimerExtension', 'StepTimerMixin', 'HostProfilerMixin'] []",
    ]
