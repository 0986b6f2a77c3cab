"""The transformers backend: forward hooks on the decoder layers, batched generation with left padding.

This backend is the reference: the vLLM backend must give the same greedy tokens. Steering math comes from
:mod:`engine.steering_ops` (shared with the vLLM worker hooks).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from engine.generation import Generation, GenerationConfig, IncrementalDecoder, StreamEvent, spec_keys
from engine.layers import find_decoder_layers
from engine.sampling import pick_tokens
from engine.stateful import SteerableModel
from engine.steering_ops import SlotTables, layer_rows, steer_rows, stream_bound, write_slot
from vectors import SteeringError, SteeringSpec


def _resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype | str:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        # CPU matmuls in bf16 are slow and inexact; use float32 there, the checkpoint's dtype on accelerators.
        return torch.float32 if device.type == "cpu" else "auto"
    named = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in named:
        raise SteeringError(f"dtype: {dtype!r} is not one of auto, {', '.join(named)}")
    return named[dtype]


def build_batch_tables(
    specs: Sequence[SteeringSpec | None], hidden_size: int, device: torch.device
) -> tuple[dict[int, SlotTables], torch.Tensor]:
    """Slot tables for one batch: identical specs share a slot; returns ``(tables per layer, slot per row)``.

    A slot's rows carry its spec's ``skip_first_tokens`` (specs that differ only there get different slots: the
    fingerprint covers it).
    """
    slots: dict[str, int] = {}
    distinct: list[SteeringSpec] = []
    row_slots = []
    for spec, key in zip(specs, spec_keys(specs), strict=True):
        if spec is None or key is None or spec.is_empty():
            row_slots.append(0)
            continue
        if key not in slots:
            distinct.append(spec)
            slots[key] = len(distinct)
        row_slots.append(slots[key])
    tables: dict[int, SlotTables] = {}
    for slot, spec in enumerate(distinct, start=1):
        for layer in spec.active_layers():
            if layer not in tables:
                tables[layer] = SlotTables.empty(len(distinct), hidden_size, device)
            rows = layer_rows(spec.layers[layer], hidden_size, spec.skip_first_tokens)
            write_slot(tables[layer], slot, {k: v.to(device) for k, v in rows.items()})
    return tables, torch.tensor(row_slots, dtype=torch.long, device=device)


def row_positions(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    """``[batch, seq]`` each token's 0-based position in its own sequence, from a causal LM's forward arguments.

    ``position_ids`` when given (the generation loop passes them: the mask's running count, so left padding does not
    shift a row); else the running count of ``attention_mask`` over its last ``seq`` columns (the mask spans the
    cache and the new tokens); else, as transformers itself does, the cache length plus the column index.
    """
    ids = kwargs.get("input_ids", args[0] if args else None)
    embeds = kwargs.get("inputs_embeds")
    b, t = (ids.shape[0], ids.shape[1]) if ids is not None else (embeds.shape[0], embeds.shape[1])
    position_ids = kwargs.get("position_ids")
    if position_ids is not None:
        return position_ids.expand(b, t)
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        return (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -t:]
    cache = kwargs.get("past_key_values")
    past = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
    device = (ids if ids is not None else embeds).device
    return (torch.arange(t, device=device) + past).expand(b, t)


class HFSteerModel(SteerableModel):
    """Steerable transformers causal LM.

    Args:
        model_name_or_path: ``"default"`` (the offline SmolLM2-135M-Instruct), a local folder or a hub id.
        dtype: ``"auto"`` (float32 on CPU, the checkpoint's dtype elsewhere), ``"float32"``, ``"bfloat16"``, ...
        device: ``"auto"`` (CUDA when present, else CPU) or a torch device string.
    """

    backend = "transformers"

    def __init__(
        self,
        model_name_or_path: str = "default",
        *,
        dtype: str | torch.dtype = "auto",
        device: str = "auto",
        model: Any = None,
        tokenizer: Any = None,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from engine.default_model import resolve_model_path

        self.device = torch.device(
            "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
        )
        if model is None:
            path = resolve_model_path(model_name_or_path)
            try:
                tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
                model = AutoModelForCausalLM.from_pretrained(path, dtype=_resolve_dtype(dtype, self.device))
            except OSError as exc:
                raise SteeringError(
                    f"model: cannot load {model_name_or_path!r} ({exc}); pass 'default', a local folder or a cached hub id"
                ) from exc
            model_id = model_name_or_path if model_name_or_path != "default" else _default_id()
        else:
            model_id = getattr(model.config, "name_or_path", None) or type(model).__name__
        self.model = model.to(self.device).eval()
        self.layers = find_decoder_layers(self.model)
        config = self.model.config.get_text_config() if hasattr(self.model.config, "get_text_config") else self.model.config
        super().__init__(model_id, tokenizer, len(self.layers), int(config.hidden_size))
        self._lock = threading.Lock()
        self._eos_ids = self._find_eos_ids()
        self._max_positions = int(getattr(config, "max_position_embeddings", 0) or 0) or (1 << 62)

    def _context_length(self) -> int:
        return self._max_positions

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, model_id: str | None = None) -> HFSteerModel:
        """Wrap an already loaded transformers model (tiny test models, custom loading)."""
        out = cls(model=model, tokenizer=tokenizer, device=str(next(model.parameters()).device))
        if model_id:
            out.model_id = model_id
            out.clear_all_vectors()
        return out

    def _find_eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.tokenizer):
            eos = getattr(source, "eos_token_id", None)
            if isinstance(eos, int):
                ids.add(eos)
            elif isinstance(eos, (list, tuple)):
                ids.update(int(e) for e in eos)
        return ids

    # -- hooks ----------------------------------------------------------------------------------------------------
    @contextmanager
    def _hooks(self, tables: dict[int, SlotTables], row_slots: torch.Tensor) -> Iterator[None]:
        """Forward hooks that steer each batch row by its slot; removed on exit, also on error.

        When a slot leaves leading positions unsteered (``skip_first_tokens``), a pre-hook on the model reads each
        forward's token positions (:func:`row_positions`) for the layer hooks: prefill and decode alike.
        """
        skips = any(bool((t.skip > 0).any()) for t in tables.values())
        current: dict[str, torch.Tensor] = {}

        def read_positions(module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
            current["positions"] = row_positions(args, kwargs)

        def make_hook(layer_tables: SlotTables):
            def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
                hidden = output[0] if isinstance(output, tuple) else output  # [batch, seq, hidden]
                b, t, h = hidden.shape
                index = row_slots[:, None].expand(b, t).reshape(-1)
                positions = current["positions"].to(hidden.device).reshape(-1) if skips else None  # [batch * seq]
                steered = steer_rows(
                    hidden.reshape(-1, h).to(torch.float32),
                    index,
                    layer_tables,
                    bound=stream_bound(hidden.dtype),
                    positions=positions,
                )
                steered = steered.to(hidden.dtype).reshape(b, t, h)
                return (steered, *output[1:]) if isinstance(output, tuple) else steered

            return hook

        handles = [self.layers[layer].register_forward_hook(make_hook(t)) for layer, t in tables.items()]
        if skips:
            handles.append(self.model.register_forward_pre_hook(read_positions, with_kwargs=True))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    # -- decoding -------------------------------------------------------------------------------------------------
    def _pad(self, prompt_ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(p) for p in prompt_ids)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else next(iter(self._eos_ids), 0)
        ids = torch.full((len(prompt_ids), width), int(pad), dtype=torch.long)
        mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
        for row, p in enumerate(prompt_ids):
            if not p:
                raise SteeringError(f"prompts[{row}]: the prompt has no tokens; pass non-empty text")
            ids[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _steps(
        self, prompt_ids: list[list[int]], config: GenerationConfig, specs: list[SteeringSpec | None]
    ) -> Iterator[tuple[list[int | None], list[str | None]]]:
        """Yield per step the new token of each row (None once finished) and finish reasons."""
        from transformers import DynamicCache

        b = len(prompt_ids)
        tables, row_slots = build_batch_tables(specs, self.hidden_size, self.device)
        generators = []
        for row in range(b):
            seed = config.seed_for(row)
            g = torch.Generator()
            g.manual_seed(seed if seed is not None else torch.seed())
            generators.append(g)
        ids, mask = self._pad(prompt_ids)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        finished = [False] * b
        reasons: list[str | None] = [None] * b
        counts = [0] * b
        # This is a generator: a streaming caller (Gradio) may resume it on another thread after each yield, and
        # inference mode is thread-local, so it is entered around each forward, never held across a yield.
        with self._lock, self._hooks(tables, row_slots):
            cache = DynamicCache()
            with torch.inference_mode():
                # Only the last position's logits are sampled: logits for the whole prompt cost a vocab-sized matmul
                # per prompt token (~20% of a CPU prefill on a 49k vocabulary, i.e. of the time to first token).
                out = self.model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
                tokens = pick_tokens(out.logits[:, -1, :], config, generators)
            for _ in range(config.max_new_tokens):
                step: list[int | None] = []
                for row in range(b):
                    if finished[row]:
                        step.append(None)
                        continue
                    tok = int(tokens[row])
                    step.append(tok)
                    counts[row] += 1
                    if tok in self._eos_ids and not config.ignore_eos:
                        finished[row], reasons[row] = True, "stop"
                    elif counts[row] >= config.max_new_tokens:
                        finished[row], reasons[row] = True, "length"
                yield step, list(reasons)
                if all(finished):
                    return
                mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
                positions = positions[:, -1:] + 1
                with torch.inference_mode():
                    out = self.model(
                        input_ids=tokens[:, None],
                        attention_mask=mask,
                        position_ids=positions,
                        past_key_values=cache,
                        use_cache=True,
                    )
                    tokens = pick_tokens(out.logits[:, -1, :], config, generators)

    def _generate(
        self, prompt_ids: list[list[int]], config: GenerationConfig, specs: list[SteeringSpec | None], decode_text: bool = True
    ) -> list[Generation]:
        tokens: list[list[int]] = [[] for _ in prompt_ids]
        reasons: list[str | None] = [None] * len(prompt_ids)
        for step, step_reasons in self._steps(prompt_ids, config, specs):
            reasons = step_reasons
            for row, tok in enumerate(step):
                if tok is not None:
                    tokens[row].append(tok)
        keys = spec_keys(specs)
        texts = self.decode_all(tokens, decode_text)
        return Generation.batch(texts, tokens, reasons, prompt_ids, keys)

    def _generate_stream(
        self, prompt_ids: list[list[int]], config: GenerationConfig, specs: list[SteeringSpec | None]
    ) -> Iterator[StreamEvent]:
        decoders = [IncrementalDecoder(self.tokenizer) for _ in prompt_ids]
        done = [False] * len(prompt_ids)
        for step, reasons in self._steps(prompt_ids, config, specs):
            for row, tok in enumerate(step):
                if tok is None or done[row]:
                    continue
                done[row] = reasons[row] is not None
                delta = decoders[row].push([tok], final=done[row])
                yield StreamEvent(row, delta, list(decoders[row].ids), done[row], reasons[row])  # type: ignore[arg-type]

    # -- activations ----------------------------------------------------------------------------------------------
    def _mean_activations(self, prompt_ids: list[list[int]], layers: list[int], batch_size: int = 16) -> dict[int, torch.Tensor]:
        sums = {layer: torch.zeros(self.hidden_size, dtype=torch.float64) for layer in layers}
        captured: dict[int, torch.Tensor] = {}

        def make_hook(layer: int):
            def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
                captured[layer] = (output[0] if isinstance(output, tuple) else output).detach().to(torch.float32)

            return hook

        with self._lock, torch.inference_mode():
            handles = [self.layers[layer].register_forward_hook(make_hook(layer)) for layer in layers]
            try:
                for start in range(0, len(prompt_ids), batch_size):
                    chunk = prompt_ids[start : start + batch_size]
                    ids, mask = self._pad(chunk)
                    positions = (mask.cumsum(-1) - 1).clamp(min=0)
                    self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
                    # Mean over each prompt's tokens after the first: position 0 is an attention sink whose
                    # outsized norm would otherwise dominate differences between prompts of different lengths.
                    first = (mask.cumsum(-1) == 1) & (mask.sum(-1, keepdim=True) > 1)
                    keep = mask.masked_fill(first, 0).to(torch.float32)
                    weights = keep / keep.sum(-1, keepdim=True)  # [batch, seq]
                    for layer in layers:
                        sums[layer] += torch.einsum("bt,bth->h", weights, captured[layer]).double().cpu()
            finally:
                for handle in handles:
                    handle.remove()
        return {layer: (total / len(prompt_ids)).to(torch.float32) for layer, total in sums.items()}

    # -- projection trace -----------------------------------------------------------------------------------------
    def _trace_rows(self, ids: list[int], spec: SteeringSpec, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward over ``ids`` steered by ``spec``; the stream at ``layer`` before and after its steering hook.

        Forward hooks run in registration order, each seeing the output the previous one returned: a hook registered
        before the steering hooks sees the block's own output, one registered after them the steered stream.
        """
        tables, row_slots = build_batch_tables([spec], self.hidden_size, self.device)
        captured: dict[str, torch.Tensor] = {}

        def grab(key: str):
            def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
                captured[key] = (output[0] if isinstance(output, tuple) else output)[0].detach().to("cpu", torch.float32)

            return hook

        with self._lock, torch.inference_mode():
            handles = [self.layers[layer].register_forward_hook(grab("pre"))]
            try:
                with self._hooks(tables, row_slots):
                    handles.append(self.layers[layer].register_forward_hook(grab("post")))
                    self.model(input_ids=torch.tensor([ids], device=self.device), use_cache=False)
            finally:
                for handle in handles:
                    handle.remove()
        return captured["pre"], captured["post"]  # [len(ids), hidden] each


# The seed's name for the transformers backend: code written for the original design imports it unchanged.
QwenSteerModel = HFSteerModel


def _default_id() -> str:
    from engine.default_model import DEFAULT_MODEL_ID

    return DEFAULT_MODEL_ID
