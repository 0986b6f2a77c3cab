"""Greedy-token parity of the vLLM backend with the transformers backend on one device (GPU or CPU).

For add (two layers), projection cap, ablation and all three together, compares ``--tokens`` greedy tokens of the
candidate backend (``VLLMSteerModel``, compiled, CUDA graphs on GPU; or a second ``HFSteerModel`` with ``--backend
hf``) with ``HFSteerModel``, and checks that every op changes every prompt's output against the unsteered run in
both backends: parity of an op that does nothing proves nothing. Then one mixed batch (unsteered + 3 specs) against
each request run alone, and activation capture. Prints one line per check and a JSON summary; exit status 1 if a
check fails, with one line per failure naming the op and the prompt.

The strengths are measured on the model, not fixed: from the transformers backend's mean activations over the
prompts, the add vectors are a multiple of the stream's norm at their layer, the cap bounds the projection onto the
mean-activation direction well below every prompt's mean projection, and the ablation reflects (scale -1) the
component along the mean-activation direction at its layer, the direction with the largest mean projection.

The model is a small random-weight checkpoint built from ``--arch`` (fp32), or ``--model`` (a folder or
``default``). ``--skip-first-tokens N`` gives every spec ``skip_first_tokens=N`` (the first N positions of each
sequence unsteered), so both backends' position masks are held to the same tokens.

Usage (``sidesteer parity`` or, from a checkout, ``python scripts/parity_check.py``):
    sidesteer parity --arch qwen3-tiny --tokenizer DIR
    sidesteer parity --model default --tokens 16
    sidesteer parity --model default --skip-first-tokens 1
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import torch

from engine import GenerationConfig, HFSteerModel, SteerableModel
from sidesteer.random_model import build_random_model, unit
from vectors import AblationSpec, LayerSteeringSpec, ProjectionCapSpec, SteeringSpec

PROMPTS = ("The weather today is", "Write a poem about the sea.", "1, 2, 3, 4,")
# How the strengths are measured (see the module docstring). The add's norm is this multiple of the mean stream's norm.
ADD_FACTOR = 4.0
# The cap's max sits this share of the smallest prompt's mean projection below it (0.75: at a quarter of it).
CAP_CUT = 0.75
# The ablation's scale on the mean-activation direction: -1 reflects the component (0 would remove it).
ABLATION_SCALE = -1.0
# Specs whose every prompt must come out changed in both backends (all of them).
SPEC_NAMES = ("add_two_layers", "cap", "ablation", "all_three")


def _direction(mean: torch.Tensor) -> torch.Tensor:
    """The unit direction of a mean activation ``[hidden]`` (float32)."""
    return (mean / mean.norm()).to(torch.float32)


def measured_specs(
    model: SteerableModel, prompts: Sequence[str], skip_first_tokens: int = 0
) -> tuple[dict[str, SteeringSpec], dict[str, Any]]:
    """Specs for the check, their strengths measured from the model's unsteered activations on ``prompts``.

    Layers: the adds at 1 and ``n - 1``, the cap at ``n // 3``, the ablation at ``n // 2`` (1, 3, 1 and 2 on a
    4-layer model; 1, 29, 10 and 15 on the 30-layer default model); ``all_three`` steers every layer.

    Args:
        model: The reference backend (its mean activations set the strengths).
        prompts: The prompts the check generates from.
        skip_first_tokens: Every spec's ``skip_first_tokens`` (leading positions left unsteered).

    Returns:
        The specs by name, and the measured numbers behind them (for the report).
    """
    n, h = model.num_layers, model.hidden_size
    cap_layer, abl_layer = max(1, n // 3), max(1, n // 2)
    means = model.mean_activations(list(prompts), list(range(n)))  # every layer: the all_three adds need each norm
    per_prompt = [model.mean_activations([p], [cap_layer, abl_layer]) for p in prompts]
    norm = {layer: float(mean.norm()) for layer, mean in means.items()}
    cap_dir, abl_dir = _direction(means[cap_layer]), _direction(means[abl_layer])
    cap_proj = [float(m[cap_layer] @ cap_dir) for m in per_prompt]
    abl_proj = [float(m[abl_layer] @ abl_dir) for m in per_prompt]
    low = min(cap_proj)
    cap_max = low - CAP_CUT * abs(low)  # below every prompt's mean projection: the cap binds on most tokens of each
    specs = {
        "add_two_layers": SteeringSpec(
            layers={
                1: LayerSteeringSpec(vector=unit(h, 1), scale=ADD_FACTOR * norm[1]),
                n - 1: LayerSteeringSpec(vector=unit(h, 2), scale=-ADD_FACTOR * norm[n - 1]),
            }
        ),
        "cap": SteeringSpec(layers={cap_layer: LayerSteeringSpec(projection_cap=ProjectionCapSpec(cap_dir, max=cap_max))}),
        "ablation": SteeringSpec(layers={abl_layer: LayerSteeringSpec(ablation=AblationSpec(abl_dir, scale=ABLATION_SCALE))}),
        "all_three": SteeringSpec(
            layers={
                layer: LayerSteeringSpec(
                    vector=unit(h, 10 + layer),
                    scale=ADD_FACTOR * norm[layer],
                    projection_cap=ProjectionCapSpec(unit(h, 20 + layer), max=0.5 * norm[layer]),
                    ablation=AblationSpec(unit(h, 30 + layer), scale=0.5),
                )
                for layer in range(n)
            }
        ),
    }
    specs = {name: SteeringSpec(spec.layers, spec.metadata, skip_first_tokens) for name, spec in specs.items()}
    strengths = {
        "add": {"layers": [1, n - 1], "scales": [ADD_FACTOR * norm[1], -ADD_FACTOR * norm[n - 1]]},
        "cap": {"layer": cap_layer, "max": cap_max, "prompt_projections": cap_proj},
        "ablation": {"layer": abl_layer, "scale": ABLATION_SCALE, "prompt_projections": abl_proj},
    }
    return specs, strengths


def _ids(generations: Sequence[Any]) -> list[list[int]]:
    return [list(g.token_ids) for g in generations]


def _changed_tokens(steered: list[list[int]], base: list[list[int]]) -> list[int]:
    """Per prompt, how many token positions differ from the unsteered run (a length difference counts too)."""
    return [sum(a != b for a, b in zip(s, u, strict=False)) + abs(len(s) - len(u)) for s, u in zip(steered, base, strict=True)]


def run_parity(
    reference: SteerableModel,
    candidate: SteerableModel,
    specs: dict[str, SteeringSpec],
    prompts: Sequence[str] = PROMPTS,
    tokens: int = 32,
) -> dict[str, Any]:
    """Compare ``candidate`` with ``reference`` token for token, and check each spec steers every prompt in both.

    Args:
        reference: The transformers backend.
        candidate: The backend under test (vLLM, or a second transformers model).
        specs: Specs by name (e.g. from :func:`measured_specs`); each must change every prompt's tokens.
        prompts: The prompts.
        tokens: Greedy tokens per prompt (EOS ignored).

    Returns:
        The report: per check its results, ``failures`` (one line each, naming the check, the op and the prompt) and
        ``ok`` (no failures).
    """
    prompts = list(prompts)
    g = GenerationConfig(max_new_tokens=tokens, ignore_eos=True)
    failures: list[str] = []
    report: dict[str, Any] = {}
    base_c, base_r = _ids(candidate.generate(prompts, g)), _ids(reference.generate(prompts, g))
    same = [c == r for c, r in zip(base_c, base_r, strict=True)]
    print("unsteered parity", same, flush=True)
    report["unsteered"] = all(same)
    failures += [
        f"unsteered: prompt {i} {prompts[i]!r}: candidate tokens differ from the reference" for i, s in enumerate(same) if not s
    ]
    alone: dict[str, list[int]] = {}
    for name, spec in specs.items():
        sc, sr = _ids(candidate.generate(prompts, g, steering=spec)), _ids(reference.generate(prompts, g, steering=spec))
        same = [c == r for c, r in zip(sc, sr, strict=True)]
        first_diff = [
            next((i for i, (u, w) in enumerate(zip(c, r, strict=False)) if u != w), None) for c, r in zip(sc, sr, strict=True)
        ]
        changed_c, changed_r = _changed_tokens(sc, base_c), _changed_tokens(sr, base_r)
        print(
            f"{name}: parity {same} first_diff {first_diff} changed tokens candidate {changed_c} reference {changed_r}",
            flush=True,
        )
        report[name] = {
            "parity": all(same),
            "first_diff": first_diff,
            "changed_tokens": {"candidate": changed_c, "reference": changed_r},
        }
        for i, prompt in enumerate(prompts):
            if not same[i]:
                failures.append(
                    f"{name}: prompt {i} {prompt!r}: candidate tokens differ from the reference from token {first_diff[i]}"
                )
            for backend, changed in (("candidate", changed_c), ("reference", changed_r)):
                if not changed[i]:
                    failures.append(
                        f"{name}: prompt {i} {prompt!r}: the steered tokens equal the unsteered ones in the {backend} "
                        "backend; the op changed nothing, so parity proves nothing (a stronger spec, or a broken op)"
                    )
        alone[name] = sc[0]
    mixed_names = [n for n in ("add_two_layers", "cap", "all_three") if n in specs]
    mixed = _ids(candidate.generate([prompts[0]] * (1 + len(mixed_names)), g, steering=[None, *(specs[n] for n in mixed_names)]))
    same = [m == e for m, e in zip(mixed, [base_c[0], *(alone[n] for n in mixed_names)], strict=True)]
    print("mixed batch equals alone", same, flush=True)
    report["mixed_batch"] = all(same)
    failures += [f"mixed batch: request {i} differs from the same request alone" for i, s in enumerate(same) if not s]
    if hasattr(candidate, "worker_requests"):
        requests = candidate.worker_requests()  # every finished request forgotten by every worker (steered or not)
        print("worker requests after the runs (tracked, steered)", requests, flush=True)
        report["worker_requests_after"] = requests
        if any(t or s for t, s in requests):
            failures.append(f"worker requests: {requests} still tracked after every request finished")
    layers = [1, candidate.num_layers - 1]
    try:
        mc, mr = candidate.mean_activations(prompts, layers), reference.mean_activations(prompts, layers)
        report["capture_rel_diff"] = max(float((mc[k] - mr[k]).abs().max() / mr[k].abs().max()) for k in mc)
        print("capture rel diff", report["capture_rel_diff"], flush=True)
    except Exception as exc:  # noqa: BLE001 - reported, not fatal to the token checks
        report["capture_error"] = repr(exc)
        print("capture error", repr(exc), flush=True)
    report["failures"] = failures
    report["ok"] = not failures
    return report


def main(argv: list[str] | None = None) -> int:
    """Run every check and print the report; exit status 1 if a check fails."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="qwen3-tiny", help="random-weight architecture to build (unless --model is given)")
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--work-dir", default="/tmp/sidesteer-parity")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--model", default=None, help="a checkpoint folder or 'default' instead of a random --arch model")
    p.add_argument("--backend", choices=("vllm", "hf"), default="vllm", help="the candidate backend (hf: a second HF model)")
    p.add_argument("--kv-cache-bytes", type=int, default=None, help="vLLM KV cache size (default: a share of memory)")
    p.add_argument(
        "--skip-first-tokens", type=int, default=0, help="every spec leaves the first N positions unsteered (default 0)"
    )
    a = p.parse_args(argv)
    from engine.default_model import resolve_model_path

    if a.model is None:
        path = build_random_model(a.arch, a.tokenizer or resolve_model_path("default"), a.work_dir, "float32", weights=True)
    else:
        path = resolve_model_path(a.model)
    hf = HFSteerModel(path, dtype="float32")
    if a.backend == "hf":
        candidate: SteerableModel = HFSteerModel(path, dtype="float32")
    else:
        # imported here: vLLM takes seconds to import, which --help and the hf backend need not wait for
        from engine import VLLMSteeringConfig, VLLMSteerModel

        candidate = VLLMSteerModel(
            VLLMSteeringConfig(
                model_name=path,
                dtype="float32",
                max_model_len=256,
                gpu_memory_utilization=0.3 if torch.cuda.is_available() else 0.2,
                max_slots=8,
                tensor_parallel_size=a.tensor_parallel_size,
                capture=True,
                engine_kwargs={"kv_cache_memory_bytes": a.kv_cache_bytes} if a.kv_cache_bytes else {},
            )
        )
        print("worker_info", candidate.worker_info, flush=True)
    try:
        specs, strengths = measured_specs(hf, PROMPTS, a.skip_first_tokens)
        print("strengths", json.dumps(strengths), flush=True)
        report: dict[str, Any] = {
            "model": a.model or a.arch,
            "backend": a.backend,
            "runner": getattr(candidate, "worker_info", {}).get("runner"),
            "device": getattr(candidate, "worker_info", {}).get("device"),
            "tensor_parallel_size": a.tensor_parallel_size,
            "skip_first_tokens": a.skip_first_tokens,
            "strengths": strengths,
        }
        report.update(run_parity(hf, candidate, specs, PROMPTS, a.tokens))
    finally:
        candidate.close()
    for failure in report["failures"]:
        print("FAIL", failure, flush=True)
    print(json.dumps(report))
    return 0 if report["ok"] else 1
