#!/usr/bin/env bash
# Install the vLLM bundle on a bare GPU machine (once) and run one benchmark of issue 5.
#
# Usage (from the repository root on the GPU machine, after copying every bundle folder's files into $BUNDLE):
#   bench/gpu_bench.sh install BUNDLE_DIR            # joins the split vLLM wheel, pip-installs into /tmp/site
#   bench/gpu_bench.sh 0.6b OUT_DIR [extra args]     # Qwen3-0.6B arch: wall clock, all configurations, A/A control
#   bench/gpu_bench.sh 0.6b-kt OUT_DIR [extra args]  # Qwen3-0.6B arch: GPU kernel time + device timeline + transformers (~6 min)
#   bench/gpu_bench.sh 0.6b-hp OUT_DIR [extra args]  # Qwen3-0.6B arch: cProfile of the engine core per configuration (~5 min)
#   bench/gpu_bench.sh 0.6b-split OUT_DIR [extra args] # Qwen3-0.6B arch: steered vs unsteered requests on one engine, host time of every call split (~9 min)
#   bench/gpu_bench.sh 8b OUT_DIR [extra args]       # Qwen3-8B arch: wall clock, two engines (no room for an A/A)
#   bench/gpu_bench.sh tp2 OUT_DIR [extra args]      # Qwen3-0.6B arch at tensor parallel 2 (two GPUs)
#   bench/gpu_bench.sh parity OUT_DIR [extra args]   # fp32 token parity + capture (add --tensor-parallel-size 2)
# Each fits one 10-minute device call (three engines start in ~3 min; a 0.6B call takes ~5 s, an 8B call ~7 s);
# extra args come last and override (e.g. --rounds 3 --order-seed 1 --json OTHER.json); pool the rounds of several
# calls with: python -m bench table --pool A.json B.json
# The tokenizer comes from $TOKENIZER (default .gpu-bundle/tok). Each benchmark writes OUT_DIR/NAME.json after
# every round, so a run stopped by a time limit still leaves its finished rounds.
set -euo pipefail
cmd=${1:?usage: bench/gpu_bench.sh install|0.6b|0.6b-kt|0.6b-hp|0.6b-split|8b|tp2|parity DIR [args]}
dir=${2:?usage: bench/gpu_bench.sh install|0.6b|0.6b-kt|0.6b-hp|0.6b-split|8b|tp2|parity DIR [args]}
shift 2
if [ "$cmd" = install ]; then
    (cd "$dir" && if ls vllm-*.whl.part.00 >/dev/null 2>&1; then
        cat $(ls vllm-*.whl.part.* | sort) > "$(ls vllm-*.whl.part.00 | sed 's/.part.00//')" && rm vllm-*.whl.part.*; fi)
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$dir"/*.whl
    exit 0
fi
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
# On the H200 (vLLM 0.26.0) the benchmark's first engine core, forked from this driver, failed with "Cannot
# re-initialize CUDA in forked subprocess" although no step of the driver's set-up initializes CUDA (checked);
# spawned engine processes start cleanly.
export VLLM_WORKER_MULTIPROC_METHOD=${VLLM_WORKER_MULTIPROC_METHOD:-spawn}
tok=${TOKENIZER:-.gpu-bundle/tok}
# Three engines (ceiling, A/A control, steered) at 0.3 each; the 8B gets two at 0.42 (three 8B engines at 0.3 OOM an
# 80 GB H100 in the sampler), TP 2 three at 0.28 (at 0.3 the third engine found 23.67 < 23.75 GiB free).
# Every engine gets its own physical cores on the GPU's NUMA node (--pin-cpus auto), and CUDA graphs cover batch
# 1024 so that every decode step of this workload replays a full graph.
common=(--tokenizer "$tok" --dtype bfloat16 --prompts 1024 --input-len 64 --output-len 128 --pin-cpus auto --cudagraph-max 1024)
mkdir -p "$dir"
case "$cmd" in
    0.6b)    python3 -m bench --model random:qwen3-0.6b "${common[@]}" --aa-control --gpu-memory-utilization 0.3 --rounds 7 --kernel-time-rounds 0 \
                 --latency-rounds 20 --hf-prompts 0 --json "$dir/qwen3-0.6b.json" "$@" ;;
    0.6b-kt) python3 -m bench --model random:qwen3-0.6b "${common[@]}" --gpu-memory-utilization 0.4 --rounds 1 --kernel-time-rounds 1 \
                 --latency-rounds 0 --hf-prompts 128 --json "$dir/qwen3-0.6b-kt.json" "$@" ;;
    0.6b-hp) python3 -m bench --model random:qwen3-0.6b "${common[@]}" --gpu-memory-utilization 0.4 --rounds 1 --kernel-time-rounds 0 \
                 --step-time-rounds 0 --host-profile-rounds 1 --latency-rounds 0 --hf-prompts 0 --warmup-prompts 128 \
                 --json "$dir/qwen3-0.6b-hp.json" "$@" ;;
    0.6b-split) python3 -m bench --model random:qwen3-0.6b "${common[@]}" --gpu-memory-utilization 0.4 --rounds 18 --kernel-time-rounds 0 \
                 --only idle,idle_llm_generate,one_layer,one_layer_llm_generate,every_layer_add_cap_ablate --step-time-in-rounds \
                 --step-time-rounds 0 --latency-rounds 0 --hf-prompts 0 --warmup-prompts 256 --json "$dir/qwen3-0.6b-split.json" "$@" ;;
    8b)      python3 -m bench --model random:qwen3-8b "${common[@]}" --gpu-memory-utilization 0.42 --rounds 4 --kernel-time-rounds 0 \
                 --latency-rounds 10 --hf-prompts 0 --warmup-prompts 64 --json "$dir/qwen3-8b.json" "$@" ;;
    tp2)     python3 -m bench --model random:qwen3-0.6b "${common[@]}" --aa-control --gpu-memory-utilization 0.28 \
                 --tensor-parallel-size 2 --rounds 5 \
                 --kernel-time-rounds 0 --latency-rounds 10 --hf-prompts 0 --json "$dir/qwen3-0.6b-tp2.json" "$@" ;;
    parity) python3 scripts/parity_check.py --arch qwen3-tiny --tokenizer "$tok" "$@" | tee "$dir/parity.log" ;;
    *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
