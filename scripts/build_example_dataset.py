"""Build the vectors of the bundled example rollout dataset ``datasets/happy`` for the default model.

Writes two registry entries, named by the rollouts convention ``<dataset>.<kind>``:

- ``happy.activation``: mean activation difference of the contrastive pairs in ``registry/prompts/happy.json`` at
  the output residual stream of ``--layer`` (``engine.extraction.mean_difference``, unnormalised).
- ``happy.trained``: a vector optimised by gradient descent, added at the same layer, so that for the dataset's own
  prompts the model prefers the happy continuation of each pair over the sad one (a preference loss
  ``-log sigmoid(beta * (log p(happy) - log p(sad)))`` averaged over pairs, with an L2 penalty; only the vector is
  trained, the model is frozen).

Usage::

    python scripts/build_example_dataset.py                      # -> registry/smollm2/happy.{activation,trained}
    python scripts/build_example_dataset.py --out /tmp/reg --steps 10
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from engine import GenerationConfig, HFSteerModel, mean_difference
from rollouts import load_dataset, vector_name
from vectors import SteeringSpec, VectorRegistry

REPO = Path(__file__).resolve().parent.parent  # the defaults below are the repository's own files

DATASET = "happy"


def train_vector(model: HFSteerModel, prompts: list, pairs: list[dict], layer: int, *, steps: int, lr: float, beta: float,
                 l2: float, seed: int = 0) -> tuple[torch.Tensor, list[float]]:  # fmt: skip
    """Optimise an add vector at ``layer`` for the preference loss described in the module docstring."""
    torch.manual_seed(seed)
    rows: list[tuple[list[int], int]] = []  # (token ids, prompt length); pair k is rows 2k (happy) and 2k+1 (sad)
    for k, pair in enumerate(pairs):
        prompt_ids = model.encode_prompt(prompts[k % len(prompts)])
        for text in (pair["positive"], pair["negative"]):
            target = model.tokenizer(" " + text, add_special_tokens=False)["input_ids"]
            rows.append((prompt_ids + list(target), len(prompt_ids)))
    width = max(len(ids) for ids, _ in rows)
    pad = model.tokenizer.pad_token_id or 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    target_mask = torch.zeros_like(ids, dtype=torch.float32)  # 1 where token t is a target token
    for r, (seq, plen) in enumerate(rows):
        ids[r, : len(seq)] = torch.tensor(seq)
        mask[r, : len(seq)] = 1
        target_mask[r, plen : len(seq)] = 1
    vector = torch.zeros(model.hidden_size, requires_grad=True)
    net = model.model
    for p in net.parameters():
        p.requires_grad_(False)

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output  # [batch, seq, hidden]
        steered = hidden + vector.to(hidden.dtype)
        return (steered, *output[1:]) if isinstance(output, tuple) else steered

    weights = target_mask[:, 1:]
    where = weights.nonzero(as_tuple=True)
    handle = model.layers[layer].register_forward_hook(hook)
    optimizer = torch.optim.Adam([vector], lr=lr)
    losses: list[float] = []
    try:
        for _ in range(steps):
            hidden = net.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]  # [rows, seq-1, hidden]
            # full-vocab logits only where the next token is a target token (all positions would cost GBs)
            logits = net.lm_head(hidden[where]).float()  # [targets, vocab]
            token_logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:][where][:, None])[:, 0]
            logp = torch.zeros_like(weights).index_put(where, token_logp)  # [rows, seq-1]
            seq_logp = logp.sum(-1) / weights.sum(-1)  # mean log-prob per target token
            margin = seq_logp[0::2] - seq_logp[1::2]
            loss = -torch.nn.functional.logsigmoid(beta * margin).mean() + l2 * vector.pow(2).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    finally:
        handle.remove()
    return vector.detach().clone(), losses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="'default' (SmolLM2-135M-Instruct), a folder or a hub id")
    parser.add_argument("--out", type=Path, default=REPO / "registry" / "smollm2", help="registry folder to write")
    parser.add_argument("--pairs", type=Path, default=REPO / "registry" / "prompts" / "happy.json", help="contrastive prompt set")
    parser.add_argument("--layer", type=int, default=8, help="0-based decoder layer of both vectors")
    parser.add_argument("--steps", type=int, default=15, help="optimiser steps for the trained vector")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--beta", type=float, default=5.0)
    parser.add_argument("--l2", type=float, default=1e-3)
    args = parser.parse_args(argv)

    model = HFSteerModel(args.model, dtype="float32")
    dataset = load_dataset(DATASET)
    pairs = json.loads(args.pairs.read_text())["pairs"]
    registry = VectorRegistry(args.out)
    common = {"model_id": model.model_id, "suggested_layer": args.layer, "overwrite": True}

    activation = mean_difference(model, [p["positive"] for p in pairs], [p["negative"] for p in pairs], args.layer)
    registry.add(vector_name(DATASET, "activation"), activation, method="mean-diff", **common,
                 description="Happy vs sad mean activation difference (rollouts example dataset 'happy').",
                 extra={"suggested_scale": 3.0, "prompt_set": args.pairs.name, "num_pairs": len(pairs)})  # fmt: skip
    trained, losses = train_vector(model, [p.prompt for p in dataset.prompts], pairs, args.layer,
                                   steps=args.steps, lr=args.lr, beta=args.beta, l2=args.l2)  # fmt: skip
    registry.add(vector_name(DATASET, "trained"), trained, method="preference-trained", **common,
                 description="Happy-preferring add vector optimised on the 'happy' dataset prompts (rollouts example).",
                 extra={"suggested_scale": 1.0, "prompt_set": args.pairs.name, "steps": args.steps, "lr": args.lr,
                        "beta": args.beta, "l2": args.l2, "loss_first": losses[0], "loss_last": losses[-1]})  # fmt: skip
    print(f"activation: layer {args.layer}, norm {activation.norm():.2f}")
    print(f"trained: layer {args.layer}, norm {trained.norm():.2f}, loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    prompt = dataset.prompts[0].prompt
    config = GenerationConfig(max_new_tokens=32)
    for label, spec in [("baseline", None), ("activation x3", SteeringSpec.single(args.layer, activation, 3.0)),
                        ("trained x1", SteeringSpec.single(args.layer, trained, 1.0))]:  # fmt: skip
        print(f"  {label}: {model.generate(prompt, config, steering=spec)[0].text!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
