"""One CPU benchmark candidate in its own process: load an engine, then time compare pairs on request.

Run by :mod:`bench.cpu_pair` (never by the product) as ``python -m bench.cpu_worker CANDIDATE_JSON``; a process per
candidate because thread settings (``OMP_WAIT_POLICY``, torch and llama.cpp threads) are process-wide. Protocol, one
JSON object per line: the worker prints ``{"start_s": ...}`` once its engine is loaded, then answers each line
``{"steer": "none"|"add_cap", "tokens": N}`` on stdin with ``{"pair_s": ..., "ttft_s": [baseline, steered]}``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper who finds a message in a bottle."}]
STEER_LAYER_FRACTION = 0.5  # the middle layer, as the app's quick mode suggests


def pair_spec(num_layers: int, hidden: int) -> Any:
    """The steered pane's spec: add + projection cap on the middle layer (the app's typical setting)."""
    from sidesteer.random_model import unit
    from vectors import LayerSteeringSpec, ProjectionCapSpec, SteeringSpec

    layer = int(num_layers * STEER_LAYER_FRACTION)
    return SteeringSpec(
        layers={
            layer: LayerSteeringSpec(
                vector=unit(hidden, 1), scale=4.0, projection_cap=ProjectionCapSpec(unit(hidden, 2), min=-1.0, max=1.0)
            )
        }
    )


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
        else:
            from engine import HFSteerModel

            self.engine = HFSteerModel(candidate["model"], dtype=candidate["dtype"])
        self.spec = pair_spec(self.engine.num_layers, self.engine.hidden_size)

    def pair(self, steer: str, tokens: int) -> dict[str, Any]:
        from engine.generation import GenerationConfig

        config = GenerationConfig(max_new_tokens=tokens, ignore_eos=True)
        specs = [None, self.spec if steer == "add_cap" else None]
        ttft: list[float | None] = [None, None]
        counts = [0, 0]
        start = time.perf_counter()
        for event in self.engine.generate_stream([PROMPT, PROMPT], config, steering=specs):
            if ttft[event.index] is None:
                ttft[event.index] = time.perf_counter() - start
            counts[event.index] = len(event.token_ids)
        return {"pair_s": time.perf_counter() - start, "ttft_s": ttft, "tokens": counts}


class LlamaCppPair:
    """llama.cpp (llama-cpp-python) on the model's GGUF: the reference, two greedy generations one after the other.

    llama.cpp applies control vectors to the whole context and has no per-row steering, so its compare pair is two
    sequential generations whether steered or not; the steered pair is timed unsteered (control vectors cost a
    vector add per layer).
    """

    def __init__(self, candidate: dict[str, Any]) -> None:
        from llama_cpp import Llama
        from transformers import AutoTokenizer

        from engine.default_model import gguf_source, resolve_model_path

        threads = int(candidate.get("threads") or 1)
        self.llm = Llama(
            model_path=candidate.get("gguf") or str(gguf_source()),
            n_threads=threads,
            n_threads_batch=threads,
            n_ctx=512,
            verbose=False,
        )
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(candidate["model"]))
        self.prompt_ids = list(tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_dict=False))

    def pair(self, steer: str, tokens: int) -> dict[str, Any]:
        ttft: list[float | None] = [None, None]
        start = time.perf_counter()
        for pane in range(2):
            self.llm.reset()
            self.llm.eval(self.prompt_ids)
            for step in range(tokens):
                token = self.llm.sample(temp=0.0)  # greedy; end-of-sequence ignored, as ignore_eos does
                if step == 0:
                    ttft[pane] = time.perf_counter() - start
                if step < tokens - 1:
                    self.llm.eval([token])
        return {"pair_s": time.perf_counter() - start, "ttft_s": ttft, "tokens": [tokens, tokens]}


def main(argv: list[str]) -> int:
    candidate = json.loads(argv[0])
    start = time.perf_counter()
    runner = LlamaCppPair(candidate) if candidate["backend"] == "llamacpp" else SidesteerPair(candidate)
    print(json.dumps({"start_s": time.perf_counter() - start}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        print(json.dumps(runner.pair(request["steer"], int(request["tokens"]))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
