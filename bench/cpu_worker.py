"""One CPU benchmark candidate in its own process: load an engine, then time compare pairs on request.

Run by :mod:`bench.cpu_pair` (never by the product) as ``python -m bench.cpu_worker CANDIDATE_JSON``; a process per
candidate because thread settings (``OMP_WAIT_POLICY``, torch and llama.cpp threads) are process-wide. Protocol, one
JSON object per line: the worker prints ``{"start_s": ...}`` once its engine is loaded, then answers each line
``{"steer": "none"|"add"|"add_cap", "tokens": N, "prompt": TEXT}`` on stdin (``prompt``: the user turn, optional) with
``{"pair_s": ..., "ttft_s": [baseline, steered]}``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

PROMPT_TEXT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
STEER_LAYER_FRACTION = 0.5  # the middle layer, as the app's quick mode suggests


def pair_spec(num_layers: int, hidden: int, steer: str = "add_cap") -> Any:
    """The steered pane's spec on the middle layer (the app's quick mode): ``add`` (scale 4) or ``add_cap`` (the add
    plus a projection cap, the app's typical setting; llama.cpp cannot steer a cap)."""
    from sidesteer.random_model import unit
    from vectors import LayerSteeringSpec, ProjectionCapSpec, SteeringSpec

    layer = int(num_layers * STEER_LAYER_FRACTION)
    cap = ProjectionCapSpec(unit(hidden, 2), min=-1.0, max=1.0) if steer == "add_cap" else None
    return SteeringSpec(layers={layer: LayerSteeringSpec(vector=unit(hidden, 1), scale=4.0, projection_cap=cap)})


class SidesteerPair:
    """A sidesteer backend streaming both panes in one ``generate_stream`` call, as the app's Compare does."""

    def __init__(self, candidate: dict[str, Any]) -> None:
        import torch

        if candidate.get("threads"):
            torch.set_num_threads(int(candidate["threads"]))
        if candidate["backend"] == "vllm":
            from engine import VLLMSteeringConfig, VLLMSteerModel

            self.engine: Any = VLLMSteerModel(
                VLLMSteeringConfig(model_name=candidate["model"], dtype=candidate["dtype"], max_model_len=1024)
            )
        elif candidate["backend"] == "llamacpp":
            from engine.llamacpp_backend import LlamaCppSteerModel

            threads = int(candidate.get("threads") or 1)
            weights = {"q8_0": "q8_0", "q4_1": "file"}.get(candidate.get("dtype") or "", "auto")
            parallel = int(candidate.get("parallel") or 1)
            self.engine = LlamaCppSteerModel(candidate["model"], threads=threads, parallel=parallel, weights=weights)
        else:
            from engine import HFSteerModel

            self.engine = HFSteerModel(candidate["model"], dtype=candidate["dtype"])
        self.specs = {s: pair_spec(self.engine.num_layers, self.engine.hidden_size, s) for s in ("add", "add_cap")}

    def pair(self, steer: str, tokens: int, prompt: str = PROMPT_TEXT) -> dict[str, Any]:
        from engine.generation import GenerationConfig

        config = GenerationConfig(max_new_tokens=tokens, ignore_eos=True)
        specs = [None, self.specs.get(steer)]
        ttft: list[float | None] = [None, None]
        counts = [0, 0]
        chat = [{"role": "user", "content": prompt}]
        start = time.perf_counter()
        for event in self.engine.generate_stream([chat, chat], config, steering=specs):
            if ttft[event.index] is None:
                ttft[event.index] = time.perf_counter() - start
            counts[event.index] = len(event.token_ids)
        return {"pair_s": time.perf_counter() - start, "ttft_s": ttft, "tokens": counts}


class LlamaCppPair:
    """llama.cpp itself (llama-cpp-python's C API) on the model's GGUF: the reference, two greedy generations one after
    the other on one context, llama.cpp's own greedy sampler, no sidesteer code in the loop.

    A control vector belongs to the whole context, so the steered pane sets one (the ``add`` spec's, laid out by
    :func:`engine.llamacpp_backend.control_vector`) before its generation and clears it after. Weights load without
    llama.cpp's "extra" buffer types, as the llama.cpp backend loads them: ggml's AMX path crashed on this machine's
    CPUs and computes Q4_1 wrongly (see :mod:`engine.llamacpp_backend`); llama-cpp-python's ``Llama`` class cannot
    turn it off.
    """

    def __init__(self, candidate: dict[str, Any]) -> None:
        import ctypes
        import logging

        import llama_cpp
        from transformers import AutoTokenizer

        from engine.default_model import gguf_source, resolve_model_path
        from engine.llamacpp_backend import control_vector

        self.lib, self.ctypes = llama_cpp, ctypes
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # else every llama.cpp log line goes to stderr
        threads = int(candidate.get("threads") or 1)
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.use_extra_bufts = False
        self.model = llama_cpp.llama_model_load_from_file(str(candidate.get("gguf") or gguf_source()).encode(), params)
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx, cparams.n_batch, cparams.n_threads, cparams.n_threads_batch = 512, 512, threads, threads
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        self.sampler = llama_cpp.llama_sampler_init_greedy()
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(candidate["model"]))
        self.n_embd = llama_cpp.llama_model_n_embd(self.model)
        layers = llama_cpp.llama_model_n_layer(self.model)
        self.vector = control_vector(pair_spec(layers, self.n_embd, "add"), layers, self.n_embd)

    def _decode(self, ids: list[int]) -> None:
        tokens = (self.ctypes.c_int32 * len(ids))(*ids)
        if self.lib.llama_decode(self.ctx, self.lib.llama_batch_get_one(tokens, len(ids))) != 0:
            raise RuntimeError("llama_decode failed")

    def _steer(self, on: bool) -> None:
        v = self.vector
        data = v.data.ctypes.data_as(self.ctypes.POINTER(self.ctypes.c_float)) if on else None
        self.lib.llama_set_adapter_cvec(self.ctx, data, v.data.size if on else 0, self.n_embd, v.il_start, v.il_end)

    def pair(self, steer: str, tokens: int, prompt: str = PROMPT_TEXT) -> dict[str, Any]:
        ttft: list[float | None] = [None, None]
        start = time.perf_counter()  # tokenizing is part of a request, as in the backends
        chat = [{"role": "user", "content": prompt}]
        prompt_ids = list(self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=False))
        for pane in range(2):
            steered = pane == 1 and steer != "none"
            if steered:
                self._steer(True)
            self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)
            self._decode(prompt_ids)
            for step in range(tokens):
                token = self.lib.llama_sampler_sample(self.sampler, self.ctx, -1)  # greedy; end-of-sequence ignored
                if step == 0:
                    ttft[pane] = time.perf_counter() - start
                if step < tokens - 1:
                    self._decode([token])
            if steered:
                self._steer(False)
        return {"pair_s": time.perf_counter() - start, "ttft_s": ttft, "tokens": [tokens, tokens]}


def main(argv: list[str]) -> int:
    candidate = json.loads(argv[0])
    start = time.perf_counter()
    runner = LlamaCppPair(candidate) if candidate["backend"] == "llamacpp-ref" else SidesteerPair(candidate)
    print(json.dumps({"start_s": time.perf_counter() - start}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        prompt = str(request.get("prompt") or PROMPT_TEXT)
        print(json.dumps(runner.pair(request["steer"], int(request["tokens"]), prompt)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
