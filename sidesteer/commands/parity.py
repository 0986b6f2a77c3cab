"""Greedy-token parity of the vLLM backend with the transformers backend on one device (GPU or CPU).

Builds a small random-weight Qwen3 checkpoint (fp32), then for add (two layers), cap, ablation and all three
together compares 32 greedy tokens of ``VLLMSteerModel`` (compiled, CUDA graphs on GPU) with ``HFSteerModel``, plus
one mixed batch (unsteered + 3 specs) against each request run alone, and activation capture. Prints one line per
check and a JSON summary; exit status 1 if a check fails.

Usage (``sidesteer parity`` or, from a checkout, ``python scripts/parity_check.py``):
    sidesteer parity --arch qwen3-tiny --tokenizer DIR
"""

from __future__ import annotations

import argparse
import json

import torch

from engine import GenerationConfig, HFSteerModel
from sidesteer.random_model import build_random_model, unit
from vectors import AblationSpec, LayerSteeringSpec, ProjectionCapSpec, SteeringSpec


def main(argv: list[str] | None = None) -> int:
    """Run every check and print the report; exit status 1 if a check fails."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="qwen3-tiny")
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--work-dir", default="/tmp/sidesteer-parity")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    a = p.parse_args(argv)
    # imported after the arguments: vLLM takes seconds to import, which --help need not wait for
    from engine import VLLMSteeringConfig, VLLMSteerModel
    from engine.default_model import resolve_model_path

    path = build_random_model(a.arch, a.tokenizer or resolve_model_path("default"), a.work_dir, "float32", weights=True)
    vm = VLLMSteerModel(
        VLLMSteeringConfig(
            model_name=path,
            dtype="float32",
            max_model_len=256,
            gpu_memory_utilization=0.3 if torch.cuda.is_available() else 0.2,
            max_slots=8,
            tensor_parallel_size=a.tensor_parallel_size,
            capture=True,
        )
    )
    print("worker_info", vm.worker_info, flush=True)
    hf = HFSteerModel(path, dtype="float32")
    n, h = vm.num_layers, vm.hidden_size
    # Random weights make every stream small; vectors sized to move it visibly.
    probe = hf.mean_activations(["hello world, this is a test"], [1])[1].norm().item()
    mag = max(4.0 * probe, 1.0)
    specs = {
        "add_two_layers": SteeringSpec(
            layers={1: LayerSteeringSpec(vector=unit(h, 1), scale=mag), n - 1: LayerSteeringSpec(vector=unit(h, 2), scale=-mag)}
        ),
        "cap": SteeringSpec(
            layers={1: LayerSteeringSpec(projection_cap=ProjectionCapSpec(unit(h, 3), min=-0.01 * mag, max=0.01 * mag))}
        ),
        "ablation": SteeringSpec(layers={2: LayerSteeringSpec(ablation=AblationSpec(unit(h, 4), scale=0.0))}),
        "all_three": SteeringSpec(
            layers={
                layer: LayerSteeringSpec(
                    vector=unit(h, 10 + layer),
                    scale=mag,
                    projection_cap=ProjectionCapSpec(unit(h, 20 + layer), max=0.5 * mag),
                    ablation=AblationSpec(unit(h, 30 + layer), scale=0.5),
                )
                for layer in range(n)
            }
        ),
    }
    prompts = ["The weather today is", "Write a poem about the sea.", "1, 2, 3, 4,"]
    g = GenerationConfig(max_new_tokens=a.tokens, ignore_eos=True)
    ok = True
    report: dict[str, object] = {
        "runner": vm.worker_info.get("runner"),
        "device": vm.worker_info.get("device"),
        "tensor_parallel_size": a.tensor_parallel_size,
    }
    base_v = vm.generate(prompts, g)
    base_h = hf.generate(prompts, g)
    same = [x.token_ids == y.token_ids for x, y in zip(base_v, base_h, strict=True)]
    print("unsteered parity", same, flush=True)
    report["unsteered"] = all(same)
    ok &= all(same)
    alone: dict[str, list[int]] = {}
    for name, spec in specs.items():
        sv = vm.generate(prompts, g, steering=spec)
        sh = hf.generate(prompts, g, steering=spec)
        same = [x.token_ids == y.token_ids for x, y in zip(sv, sh, strict=True)]
        changed = [x.token_ids != b.token_ids for x, b in zip(sv, base_v, strict=True)]
        first_diff = [
            next((i for i, (u, w) in enumerate(zip(x.token_ids, y.token_ids, strict=False)) if u != w), None)
            for x, y in zip(sv, sh, strict=True)
        ]
        print(f"{name}: parity {same} first_diff {first_diff} steering_changed_output {changed}", flush=True)
        report[name] = {"parity": all(same), "changed": changed, "first_diff": first_diff}
        ok &= all(same)
        alone[name] = sv[0].token_ids
    mixed_specs = [None, specs["add_two_layers"], specs["cap"], specs["all_three"]]
    mixed = vm.generate([prompts[0]] * 4, g, steering=mixed_specs)
    expect = [base_v[0].token_ids, alone["add_two_layers"], alone["cap"], alone["all_three"]]
    same = [m.token_ids == e for m, e in zip(mixed, expect, strict=True)]
    print("mixed batch equals alone", same, flush=True)
    report["mixed_batch"] = all(same)
    ok &= all(same)
    requests = vm.worker_requests()  # every finished request forgotten by every worker (steered or not)
    print("worker requests after the runs (tracked, steered)", requests, flush=True)
    report["worker_requests_after"] = requests
    ok &= not any(t or s for t, s in requests)
    try:
        mv = vm.mean_activations(prompts, [1, n - 1])
        mh = hf.mean_activations(prompts, [1, n - 1])
        diff = max(float((mv[k] - mh[k]).abs().max() / mh[k].abs().max()) for k in mv)
        report["capture_rel_diff"] = diff
        print("capture rel diff", diff, flush=True)
    except Exception as exc:  # noqa: BLE001 - reported, not fatal to the token checks
        report["capture_error"] = repr(exc)
        print("capture error", repr(exc), flush=True)
    vm.close()
    report["ok"] = bool(ok)
    print(json.dumps(report))
    return 0 if ok else 1
