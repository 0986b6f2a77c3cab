"""Thin handlers behind every button: parse the inputs, make one engine or registry call, format the result.

Handlers raise :class:`~vectors.SteeringError` for bad input; :mod:`app.errors` turns it into ``gr.Error`` where the
UI wires them up. Steering always travels with the request (``steering=[None, spec]``): no handler changes the
engine's global steering state, so concurrent users never see each other's specs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gradio as gr
import torch

from app.chat import ChatHistory, add_turn, new_chat, turn_prompts
from app.limits import OPTIONS, AppLimits
from app.quick_rows import editor_rows, quick_rows
from app.runs import RunTracker
from app.sanitize import escape_markdown
from app.scale_range import REFERENCE_PROMPTS, ScaleRange, scale_note, scale_range
from app.sides import (
    ENGINE_RESTARTING_RETRY,
    ENGINE_RESTARTING_STATS,
    ENGINE_RESTARTING_WAIT,
    GENERATING,
    SIDES,
    STOPPED,
    WAITING,
    Pane,
    notice,
)
from app.spec_editor import (
    IMPORTED_PREFIX,
    SESSION_PREFIX,
    Rows,
    SessionVectors,
    VectorSource,
    count_rows,
    names_by_layer,
    rows_to_spec,
    spec_to_rows,
)
from app.stamps import describe_rows, stamps
from app.temp_files import ExportFolder, discard_upload, gradio_upload_dir
from engine import EngineDeadError, GenerationConfig, SteerableModel
from engine.generation import Prompt
from vectors import (
    SpecMetadata,
    SteeringError,
    SteeringSpec,
    VectorRegistry,
    export_gguf_control_vector,
    import_gguf_control_vector,
)
from vectors.registry import VectorEntry, validate_name

logger = logging.getLogger("sidesteer.app")

REGISTRY_COLUMNS = ["name", "layer", "hidden size", "norm", "scale", "description", "method", "stored", "model"]
# Shown first by default: vectors that visibly steer the default prompt at their suggested scale.
PREFERRED_DEFAULTS = ("pirate", "happy", "formal")
EXPORTED_SPECS_REMEMBERED = 1024
GENERATE_LABEL = "Generate"
RESTART_LABEL = "Restart (cancels the running comparison)"
SWEEP_COLUMNS = ["scale factor", "tokens", "completion"]
SWEEP_RUNNING = "running…"  # marks a sweep row whose output has not finished yet
SWEEP_YIELD_EVERY = 8
MAX_SWEEP_SCALES = AppLimits().max_sweep_points
SPEC_SUFFIXES = (".safetensors", ".gguf")
CompareOutput = tuple[Any, ...]  # the four pane strings, then the chat history (a gr.State)
READ_ONLY_DELETE = (
    "delete: this app serves a read-only registry (public mode: SIDESTEER_READ_ONLY=1 or --read-only-registry), so {name!r} "
    "cannot be deleted; vectors you create here live only in your browser session"
)
ENGINE_DEAD = "engine: the model engine stopped and could not be restarted; try again later (the operator must restart the app)"
CHAT_NEEDS_TEMPLATE = "chat_mode: multi-turn chat needs the chat template; untick raw completion (or chat mode)"
_SWEEP_OPTION = next(o for o in OPTIONS if o.field == "max_sweep_points")


def _int(value: Any, field: str, minimum: int = 0) -> int:
    """An integer from a slider or number box (which may send ``8.0``)."""
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise SteeringError(f"{field}: {value!r} is not a number; pass a whole number") from exc
    if not number.is_integer() or number < minimum:
        raise SteeringError(f"{field}: {value!r} is not a whole number >= {minimum}")
    return int(number)


def build_prompt(prompt: str, system_prompt: str | None, raw_completion: bool) -> Prompt:
    """A chat message list (optional system message + user message), or the raw text to complete.

    Raises:
        SteeringError: The prompt is empty.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise SteeringError("prompt: the prompt is empty; type a message (or text to complete)")
    if raw_completion:
        return prompt
    messages = [{"role": "system", "content": system_prompt}] if system_prompt and system_prompt.strip() else []
    return [*messages, {"role": "user", "content": prompt}]


def parse_scales(text: str, max_points: int = MAX_SWEEP_SCALES) -> list[float]:
    """``"-2, -1, 0, 1, 2"`` -> ``[-2.0, -1.0, 0.0, 1.0, 2.0]``.

    Raises:
        SteeringError: Empty, not numbers, not finite, or more than ``max_points`` values.
    """
    parts = [p for p in str(text or "").replace(";", ",").replace(" ", ",").split(",") if p.strip()]
    if not parts:
        raise SteeringError("scales: no values; type comma-separated numbers such as -2, -1, 0, 1, 2")
    if len(parts) > max_points:
        raise SteeringError(
            f"scales: {len(parts)} values; a sweep takes at most {max_points} on this server "
            f"(the operator can raise it with {_SWEEP_OPTION.env} or {_SWEEP_OPTION.flag})"
        )
    try:
        scales = [float(p) for p in parts]
    except ValueError as exc:
        raise SteeringError(f"scales: {text!r} holds something that is not a number ({exc}); use e.g. -2, -1, 0, 1, 2") from exc
    if not all(math.isfinite(s) for s in scales):
        raise SteeringError(f"scales: {text!r} holds a non-finite value; use finite numbers")
    return scales


def default_skip(spec: SteeringSpec) -> int:
    """Leading positions the UI leaves unsteered by default: 1 when a cap or ablation is used (position 0, the
    attention sink, has a projection far outside any sensible cap), 0 for add-only specs (today's behaviour)."""
    uses = any(layer.projection_cap is not None or layer.ablation is not None for layer in spec.layers.values())
    return 1 if uses else 0


def _lines(text: str | None) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


class Callbacks:
    """The app's handlers, bound to one engine, one registry, one export folder and the app's limits.

    Handlers that take ``session`` get the browser session's own vectors (``gr.State``): ``file:`` vectors of
    imported spec files and, in read-only mode, ``session:`` vectors created on the Registry tab. Those never touch
    the disk and no other session sees them.

    Args:
        engine: The steerable model (any backend).
        registry: Where named vectors live.
        export_dir: Private folder for exported files (Gradio copies them into its cache to serve them).
        registry_writable: Allow creating and deleting registry vectors; also off when ``registry.writable`` is.
        limits: Per-request limits; the defaults when None.
        upload_dir: Gradio's upload cache (uploads inside it are deleted once read); Gradio's own when None.
    """

    def __init__(
        self,
        engine: SteerableModel,
        registry: VectorRegistry,
        export_dir: Path,
        *,
        registry_writable: bool = True,
        limits: AppLimits | None = None,
        upload_dir: Path | None = None,
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.export_dir = Path(export_dir)
        self.exports = ExportFolder(self.export_dir)
        self.registry_writable = registry_writable and registry.writable
        self.limits = limits or AppLimits()
        self.upload_dir = Path(upload_dir) if upload_dir else gradio_upload_dir()
        self.runs = RunTracker()
        # fingerprint -> {(layer, op): name} of specs this server exported, so that importing one of them gives back
        # the names it was exported with, even where several registry vectors hold the same tensor.
        self.exported_names: dict[str, dict[tuple[int, str], str]] = {}
        self._residual_lock = threading.Lock()
        self._residual_norms: dict[int, float] | None = None  # measured on first use

    @property
    def read_only(self) -> bool:
        """Public mode: the registry is never written; created vectors stay in the browser session."""
        return not self.registry_writable

    # -- shared parsing ---------------------------------------------------------------------------------------------
    def fits(self, entry: VectorEntry) -> bool:
        """True when the vector can steer the loaded model (same hidden size, suggested layer in range)."""
        layer_ok = entry.suggested_layer is None or entry.suggested_layer < self.engine.num_layers
        return entry.hidden_size == self.engine.hidden_size and layer_ok

    def fitting_vectors(self) -> list[VectorEntry]:
        """Registry vectors that fit the loaded model."""
        return [e for e in self.registry.list(hidden_size=self.engine.hidden_size) if self.fits(e)]

    def known_vectors(self, session: SessionVectors | None = None) -> list[tuple[str, VectorEntry]]:
        """``(name, entry)`` of every named vector that fits: the registry's, then this session's created ones."""
        own = [(name, e) for name, e in (session or {}).items() if isinstance(e, VectorEntry) and self.fits(e)]
        return [(e.name, e) for e in self.fitting_vectors()] + sorted(own, key=lambda item: item[0])

    def _named_tensors(self, session: SessionVectors | None) -> dict[str, torch.Tensor]:
        return {name: entry.vector for name, entry in self.known_vectors(session)}

    def current_spec(
        self,
        vector: str | None,
        layer: Any,
        scale: Any,
        steering_mode: str,
        editor: Any,
        session: SessionVectors | None,
        description: str = "",
        *,
        extra: Sequence[Any] = (),
        skip_first_tokens: Any = 0,
    ) -> SteeringSpec:
        """The spec the controls describe, checked against the model.

        Quick mode: one add op per quick row (row 1 = ``vector, layer, scale``, rows 2.. in ``extra``), built as the
        spec editor would build the same rows. Editor mode: the editor's rows.

        Args:
            skip_first_tokens: Leading positions left unsteered (0, the default, steers every position); None or ""
                = the page's default: 1 when a cap or ablation is used (the attention sink's huge projection would be
                clamped or removed), else 0.
        """
        metadata = SpecMetadata(model_id=self.engine.model_id, hidden_size=self.engine.hidden_size, description=description)
        source = VectorSource(self.registry, session or {})
        rows = self.quick_editor_rows(vector, layer, scale, steering_mode, editor, source, extra)
        if steering_mode == "quick" and not description:
            metadata.description = "; ".join(f"{r[1]} at layer {r[0]}, scale {float(r[2]):g}" for r in rows)
        spec = rows_to_spec(rows, source, metadata)
        spec.skip_first_tokens = self.skip_first_tokens(skip_first_tokens, spec)
        return self.engine.validate_spec(spec)

    def quick_editor_rows(
        self,
        vector: str | None,
        layer: Any,
        scale: Any,
        steering_mode: str,
        editor: Any,
        source: VectorSource,
        extra: Sequence[Any] = (),
    ) -> Any:
        """The setup as spec editor rows: the editor's own rows, or the quick rows (names resolved against ``source``).

        Args:
            extra: Quick rows 2.. as ``[vector_2, layer_2, scale_2, vector_3, ...]`` (rows without a vector are off).
        """
        if steering_mode == "editor":
            self.limits.check("max_spec_layers", count_rows(editor), "spec editor", "remove rows")
            return editor
        if steering_mode == "quick":
            return editor_rows(quick_rows(vector, layer, scale, extra), source, self.engine.num_layers)
        raise SteeringError(f"steering_mode: {steering_mode!r} is not 'quick' or 'editor'")

    @staticmethod
    def skip_first_tokens(value: Any, spec: SteeringSpec) -> int:
        """The ``skip_first_tokens`` to use: ``value``, or the default for ``spec`` when it is None or ""."""
        if value is None or value == "":
            return default_skip(spec)
        return _int(value, "skip_first_tokens")

    def check_prompt(self, request: Prompt) -> None:
        """Refuse a prompt over the token limit (counted with the chat template) before it reaches the engine."""
        self.limits.check(
            "max_prompt_tokens", len(self.engine.encode_prompt(request)), "prompt", "shorten the prompt or the system prompt"
        )

    def config(self, n: int, max_new_tokens: Any, temperature: Any, top_p: Any, seed: Any) -> GenerationConfig:
        """Sampling settings with one shared seed for all ``n`` rows: baseline and steered draw the same random numbers."""
        base = random.randrange(2**31) if seed is None or seed == "" else _int(seed, "seed")
        new_tokens = _int(max_new_tokens, "max_new_tokens", 1)
        self.limits.check("max_new_tokens", new_tokens, "max_new_tokens", "ask for fewer tokens")  # the API can send any number
        return GenerationConfig(
            max_new_tokens=new_tokens,
            temperature=float(temperature),
            top_p=float(top_p),
            seed=base,
            seeds=[base] * n,
        )

    # -- Compare and Sweep -----------------------------------------------------------------------------------------
    def compare(
        self,
        prompt: str,
        system_prompt: str,
        vector: str | None,
        layer: float,
        scale: float,
        max_new_tokens: float,
        temperature: float,
        top_p: float,
        seed: float | None,
        raw_completion: bool,
        steering_mode: str,
        editor: Any,
        session: SessionVectors | None = None,
        vector_2: str | None = None,
        layer_2: float = 0,
        scale_2: float = 1.0,
        vector_3: str | None = None,
        layer_3: float = 0,
        scale_3: float = 1.0,
        vector_4: str | None = None,
        layer_4: float = 0,
        scale_4: float = 1.0,
        skip_first_tokens: float | None = 0,
        chat_mode: bool = False,
        history: ChatHistory | None = None,
        request: gr.Request | None = None,
    ) -> Iterator[CompareOutput]:
        """Generate the baseline and the steered completion of one prompt in one batch, streaming both.

        Args:
            prompt: User message (chat mode) or the text to complete (raw mode).
            system_prompt: Optional system message (chat mode only).
            vector: Registry vector name of quick row 1.
            layer: 0-based decoder layer of quick row 1.
            scale: Multiplier of quick row 1's vector.
            max_new_tokens: Tokens to generate per side.
            temperature: 0 = greedy.
            top_p: Nucleus sampling mass.
            seed: Shared by both sides, so only the steering differs; empty = random.
            raw_completion: Complete raw text instead of applying the chat template.
            steering_mode: "quick" (the vector rows) or "editor" (the multi-layer spec table).
            editor: Spec editor rows (layer, vector, scale, cap vector, cap min, cap max, ablation vector, ablation scale).
            vector_2: Quick row 2's vector (empty = no row 2); layer_2, scale_2 as for row 1. Rows 3 and 4 alike.
            skip_first_tokens: Leading positions left unsteered (0 = every position, the default; empty = what the page
                picks: 1 with a cap or ablation, else 0).
            chat_mode: Continue this session's conversation: each side gets its own earlier replies back.

        Returns:
            Baseline text, steered text, baseline stats, steered stats (streamed; the last yield is final). Each stats
            line ends with a stamp of what produced the pane (setup, spec fingerprint, sampling). While the engine
            restarts, both panes say so. A newer compare call of the same browser session stops this one.
        """
        extra = (vector_2, layer_2, scale_2, vector_3, layer_3, scale_3, vector_4, layer_4, scale_4)
        if chat_mode and raw_completion:
            raise SteeringError(CHAT_NEEDS_TEMPLATE)
        if chat_mode:
            build_prompt(prompt, system_prompt, False)  # the same checks of the message
            prompts: list[Prompt] = list(turn_prompts(history, prompt, system_prompt))
        else:
            prompts = [build_prompt(prompt, system_prompt, raw_completion)] * len(SIDES)
        for side_prompt in prompts:
            self.check_prompt(side_prompt)
        spec = self.current_spec(
            vector, layer, scale, steering_mode, editor, session, extra=extra, skip_first_tokens=skip_first_tokens
        )
        config = self.config(len(SIDES), max_new_tokens, temperature, top_p, seed)
        source = VectorSource(self.registry, session or {})
        setup = "; ".join(describe_rows(self.quick_editor_rows(vector, layer, scale, steering_mode, editor, source, extra)))
        labels = stamps(setup, spec, config)
        status = self.engine.status()
        if status == "dead":
            raise SteeringError(ENGINE_DEAD)
        run = self.runs.start(request.session_hash if request and request.session_hash else f"anonymous-{id(spec)}")
        if status == "restarting":
            yield (*notice(ENGINE_RESTARTING_WAIT, ENGINE_RESTARTING_STATS), history)  # the call below waits for it
        panes = [Pane() for _ in SIDES]

        def output(stopped: bool = False, turns: ChatHistory | None = history) -> CompareOutput:
            return (
                *(p.text for p in panes),
                *(f"{p.stats(stopped)}  \n{label}" for p, label in zip(panes, labels, strict=True)),
                turns,
            )

        stream = None
        try:
            stream = self.engine.generate_stream(prompts, config, steering=[spec if side.steered else None for side in SIDES])
            for event in stream:
                if not self.runs.is_current(run):
                    return  # a newer Generate of this session took over: its output fills the panes
                panes[event.index].push(event)
                yield output()
        except EngineDeadError as exc:  # it died under this request: nothing ran, the next click will
            logger.warning("compare: %s", exc)
            yield (*notice(ENGINE_RESTARTING_RETRY, ENGINE_RESTARTING_STATS), history)
            return
        finally:
            if stream is not None:
                stream.close()  # on Stop, Gradio drops this generator: closing the stream ends the engine request
            self.runs.finish(run)
        # Only a turn that ran to its end joins the conversation (a stopped or restarted one never gets here).
        turns = add_turn(history, prompts[0][-1]["content"], [p.text for p in panes]) if chat_mode else history
        yield output(stopped=True, turns=turns)

    @staticmethod
    def new_chat() -> tuple[ChatHistory, str, str, str, str]:
        """Start a new conversation: empty histories and empty panes.

        Returns:
            The empty history, then baseline text, steered text and both stats lines, all empty.
        """
        return new_chat(), "", "", "", ""

    def generate_label(self, request: gr.Request | None = None) -> str:
        """The Generate button's label: "Restart" while a comparison of this session streams (a click restarts it)."""
        session = request.session_hash if request else None
        return RESTART_LABEL if session and self.runs.streaming(session) else GENERATE_LABEL

    @staticmethod
    def stopped_stats(*stats: str) -> tuple[str, ...]:
        """Stats lines after Stop: a line still saying "generating…" or "waiting for the model…" says "stopped"."""
        return tuple((line or "").replace(GENERATING, STOPPED).replace(WAITING, STOPPED) for line in stats)

    def sweep(
        self,
        prompt: str,
        system_prompt: str,
        vector: str | None,
        layer: float,
        scale: float,
        max_new_tokens: float,
        temperature: float,
        top_p: float,
        seed: float | None,
        raw_completion: bool,
        steering_mode: str,
        editor: Any,
        scales: str,
        session: SessionVectors | None = None,
        vector_2: str | None = None,
        layer_2: float = 0,
        scale_2: float = 1.0,
        vector_3: str | None = None,
        layer_3: float = 0,
        scale_3: float = 1.0,
        vector_4: str | None = None,
        layer_4: float = 0,
        scale_4: float = 1.0,
        skip_first_tokens: float | None = 0,
    ) -> Iterator[Rows]:
        """Run the current setup at several scale factors in one batch (one row per factor, same seed for all).

        Streams: every row shows its text so far and ``running`` until it ends; a row is final the moment its scale's
        output finishes, and the yields come as rows finish (and every few tokens in between).

        Args:
            scales: Comma-separated factors that multiply every add scale of the setup, e.g. "-2, -1, 0, 1, 2".
            vector_2: Quick rows 2-4 and skip_first_tokens as for /compare. A sweep is single-turn (no chat history).

        Returns:
            Rows of (scale factor, tokens, completion); the last yield is final (every row done).
        """
        request = build_prompt(prompt, system_prompt, raw_completion)
        factors = parse_scales(scales, self.limits.max_sweep_points)
        self.check_prompt(request)
        extra = (vector_2, layer_2, scale_2, vector_3, layer_3, scale_3, vector_4, layer_4, scale_4)
        spec = self.current_spec(
            vector, layer, scale, steering_mode, editor, session, extra=extra, skip_first_tokens=skip_first_tokens
        )
        config = self.config(len(factors), max_new_tokens, temperature, top_p, seed)
        panes = [Pane() for _ in factors]

        def grid() -> Rows:
            return [
                [factor, p.num_tokens, p.text if p.finish_reason else f"{p.text} [{SWEEP_RUNNING}]".lstrip()]
                for factor, p in zip(factors, panes, strict=True)
            ]

        yield grid()
        stream = self.engine.generate_stream([request] * len(factors), config, steering=[spec.scaled(f) for f in factors])
        try:
            for count, event in enumerate(stream, 1):
                panes[event.index].push(event)
                if event.finished or count % SWEEP_YIELD_EVERY == 0:  # a browser update per token per row is too many
                    yield grid()
        finally:
            stream.close()  # Gradio drops this generator on cancel: end the engine request
        yield grid()

    # -- spec files ------------------------------------------------------------------------------------------------
    def export_spec(
        self,
        vector: str | None,
        layer: float,
        scale: float,
        steering_mode: str,
        editor: Any,
        description: str,
        session: SessionVectors | None = None,
        vector_2: str | None = None,
        layer_2: float = 0,
        scale_2: float = 1.0,
        vector_3: str | None = None,
        layer_3: float = 0,
        scale_3: float = 1.0,
        vector_4: str | None = None,
        layer_4: float = 0,
        scale_4: float = 1.0,
        skip_first_tokens: float | None = 0,
    ) -> str:
        """Export the current steering setup as a sidesteer spec file (.safetensors).

        Args:
            vector_2: Quick rows 2-4 and skip_first_tokens as for /compare.

        Returns:
            Path of the spec file to download.
        """
        extra = (vector_2, layer_2, scale_2, vector_3, layer_3, scale_3, vector_4, layer_4, scale_4)
        spec = self.current_spec(
            vector,
            layer,
            scale,
            steering_mode,
            editor,
            session,
            description or "",
            extra=extra,
            skip_first_tokens=skip_first_tokens,
        )
        source = VectorSource(self.registry, session or {})
        rows = self.quick_editor_rows(vector, layer, scale, steering_mode, editor, source, extra)
        self._remember_names(spec, names_by_layer(None, 0, "editor", rows))
        return str(spec.save(self.exports.new_path(f"spec-{spec.fingerprint()[:12]}.safetensors")))

    def export_gguf(
        self,
        vector: str | None,
        layer: float,
        scale: float,
        steering_mode: str,
        editor: Any,
        description: str,
        session: SessionVectors | None = None,
        vector_2: str | None = None,
        layer_2: float = 0,
        scale_2: float = 1.0,
        vector_3: str | None = None,
        layer_3: float = 0,
        scale_3: float = 1.0,
        vector_4: str | None = None,
        layer_4: float = 0,
        scale_4: float = 1.0,
        skip_first_tokens: float | None = 0,
    ) -> str:
        """Export the current setup's add vectors as a llama.cpp control vector (.gguf).

        Layer L becomes ``direction.L``, the output of llama.cpp's block L; layer 0 has no llama.cpp slot and is refused.

        Returns:
            Path of the GGUF file to download.
        """
        extra = (vector_2, layer_2, scale_2, vector_3, layer_3, scale_3, vector_4, layer_4, scale_4)
        spec = self.current_spec(
            vector,
            layer,
            scale,
            steering_mode,
            editor,
            session,
            description or "",
            extra=extra,
            skip_first_tokens=skip_first_tokens,
        )
        return str(export_gguf_control_vector(spec, self.exports.new_path(f"control-vector-{spec.fingerprint()[:12]}.gguf")))

    def _remember_names(self, spec: SteeringSpec, names: dict[tuple[int, str], str]) -> None:
        fingerprint = spec.fingerprint()
        self.exported_names.pop(fingerprint, None)
        self.exported_names[fingerprint] = names
        while len(self.exported_names) > EXPORTED_SPECS_REMEMBERED:  # oldest first (dicts keep insertion order)
            self.exported_names.pop(next(iter(self.exported_names)))

    def _read_upload(self, path: Path) -> SteeringSpec:
        """The spec in an uploaded file, checked against the limits and the loaded model."""
        if path.suffix.lower() not in SPEC_SUFFIXES:
            raise SteeringError(
                f"file: {path.name!r} is neither a .safetensors spec file nor a .gguf control vector; pick one of those"
            )
        if not path.is_file():
            raise SteeringError(f"file: {path.name!r} is no longer on the server; upload it again")
        self.limits.check_upload(path)
        if path.suffix.lower() == ".gguf":
            spec = import_gguf_control_vector(path, model_id=self.engine.model_id)
        else:
            spec = SteeringSpec.load(path)
        self.limits.check("max_spec_layers", len(spec.active_layers()), "file", "import a spec with fewer layers")
        return self.engine.validate_spec(spec)

    def import_spec(self, file: str | None, session: SessionVectors | None = None) -> tuple[str, Rows, dict[str, Any], str]:
        """Load a spec file (.safetensors) or llama.cpp control vector (.gguf) into the spec editor.

        The file is validated against the loaded model first; a bad file raises and changes nothing. The upload is
        deleted from the server once read (its vectors stay in this browser session).

        Args:
            file: The uploaded file.

        Returns:
            Steering mode ("editor"), the editor rows, and a status line.
        """
        if not file:
            raise SteeringError("file: nothing uploaded; choose a .safetensors spec file or a .gguf control vector")
        path = Path(file)
        try:
            spec = self._read_upload(path)
        finally:
            discard_upload(path, self.upload_dir)
        rows, vectors = spec_to_rows(spec, self._named_tensors(session), self.exported_names.get(spec.fingerprint()))
        kept = {name: v for name, v in (session or {}).items() if not name.startswith(IMPORTED_PREFIX)}  # the previous file's go
        # Everything from the file is shown as plain text: a stranger wrote it.
        status = f"Imported **{escape_markdown(path.name)}**: {len(rows)} layer(s), fingerprint `{spec.fingerprint()[:12]}`"
        if spec.model_id and spec.model_id != self.engine.model_id:
            status += f" (made for {escape_markdown(spec.model_id)}, loaded model is {escape_markdown(self.engine.model_id)})"
        if spec.metadata.description:
            status += f"; {escape_markdown(spec.metadata.description)}"
        return "editor", rows, {**kept, **vectors}, status

    def quick_to_editor(
        self,
        vector: str | None,
        layer: float,
        scale: float,
        session: SessionVectors | None = None,
        vector_2: str | None = None,
        layer_2: float = 0,
        scale_2: float = 1.0,
        vector_3: str | None = None,
        layer_3: float = 0,
        scale_3: float = 1.0,
        vector_4: str | None = None,
        layer_4: float = 0,
        scale_4: float = 1.0,
    ) -> tuple[str, Rows]:
        """Copy the quick rows into the spec editor (to add more layers or ops): one editor row per quick row.

        Returns:
            Steering mode ("editor") and the editor rows.
        """
        extra = (vector_2, layer_2, scale_2, vector_3, layer_3, scale_3, vector_4, layer_4, scale_4)
        rows = self.quick_editor_rows(vector, layer, scale, "quick", None, VectorSource(self.registry, session or {}), extra)
        return "editor", sorted(rows, key=lambda row: row[0])

    # -- registry --------------------------------------------------------------------------------------------------
    def _stored(self, name: str) -> str:
        if name.startswith(SESSION_PREFIX):
            return "this session"
        return "shipped" if self.registry.is_shipped(name) else "server"

    def list_vectors(self, session: SessionVectors | None = None) -> Rows:
        """Registry vectors (and this session's own) that fit the loaded model.

        Returns:
            Rows of (name, suggested layer, hidden size, norm, suggested scale, description, method, stored, model).
        """
        return [
            [
                name,
                e.suggested_layer,
                e.hidden_size,
                round(e.norm, 2),
                e.suggested_scale,
                e.description,
                e.method,
                self._stored(name),
                e.model_id or "",
            ]
            for name, e in self.known_vectors(session)
        ]

    @staticmethod
    def _public(entry: VectorEntry, name: str | None = None) -> dict[str, Any]:
        """Entry metadata without the server-side path (never show clients the server's file system)."""
        details = entry.to_dict()
        details.pop("path", None)
        if name is not None:
            details["name"] = name
        return details

    def vector_names(self, session: SessionVectors | None = None) -> list[str]:
        """Names of every vector that fits the loaded model (registry first, then this session's)."""
        return [name for name, _ in self.known_vectors(session)]

    def default_vector(self) -> str | None:
        """The vector selected at start: one that visibly steers at its suggested scale when the registry has it."""
        names = self.vector_names()
        return next((n for n in PREFERRED_DEFAULTS if n in names), names[0] if names else None)

    def vector_details(self, name: str | None, session: SessionVectors | None = None) -> dict[str, Any]:
        """All metadata of one registry vector."""
        if not name:
            return {}
        entry = VectorSource(self.registry, session or {}).entry(name, "name")
        if isinstance(entry, torch.Tensor):  # from an imported file: no metadata
            return {"name": name, "hidden_size": entry.numel(), "norm": float(entry.norm()), "stored": "this session"}
        return {**self._public(entry, name), "stored": self._stored(name)}

    def reference_residual_norms(self) -> dict[int, float]:
        """Norm of the mean residual stream at every layer on :data:`~app.scale_range.REFERENCE_PROMPTS`, measured
        once (one unsteered forward pass); empty when the engine cannot (a vLLM engine without activation capture)."""
        with self._residual_lock:
            if self._residual_norms is None:
                prompts = [[{"role": "user", "content": text}] for text in REFERENCE_PROMPTS]
                try:
                    means = self.engine.mean_activations(prompts, list(range(self.engine.num_layers)))
                    self._residual_norms = {layer: float(mean.norm()) for layer, mean in means.items()}
                except Exception as exc:  # the scale note then says "unknown"; nothing else depends on it
                    logger.warning("residual norms: not measured (%s); the scale sliders use generic ranges", exc)
                    self._residual_norms = {}
            return self._residual_norms

    def residual_norm(self, entry: VectorEntry | torch.Tensor, layer: int) -> float | None:
        """The residual norm a scale at ``layer`` relates to: the vector's own record when made at that layer, else
        the reference measurement."""
        if isinstance(entry, VectorEntry) and entry.residual_norm is not None and entry.suggested_layer == layer:
            return entry.residual_norm
        return self.reference_residual_norms().get(layer)

    def _scale_basis(self, name: str, layer: int, session: SessionVectors | None) -> tuple[float, float | None, float | None]:
        """(vector norm, residual norm at ``layer`` or None, suggested scale or None) of a named vector."""
        entry = VectorSource(self.registry, session or {}).entry(name, "vector")
        norm = float(entry.norm()) if isinstance(entry, torch.Tensor) else entry.norm
        suggested = None if isinstance(entry, torch.Tensor) else entry.suggested_scale
        return norm, self.residual_norm(entry, layer), suggested

    def scale_controls(self, name: str | None, layer: Any, scale: Any, session: SessionVectors | None) -> tuple[ScaleRange, str]:
        """Range of the scale slider for ``name`` at ``layer``, and the note for ``scale`` (None = its default)."""
        layer_index = _int(layer, "layer")
        if not name:
            fallback = scale_range(0.0, None, None)
            return fallback, "pick a vector"
        norm, residual, suggested = self._scale_basis(name, layer_index, session)
        settings = scale_range(norm, residual, suggested)
        value = settings.default if scale is None else float(scale)
        return settings, scale_note(value, norm, residual, layer_index)

    def scale_note(self, name: str | None, layer: Any, scale: Any, session: SessionVectors | None = None) -> str:
        """The note beside a scale slider: what the scale means next to the residual norm at the layer.

        Returns:
            E.g. "2 = about 0.51x the residual norm at layer 8".
        """
        if not name:
            return ""
        return self.scale_controls(name, layer, scale, session)[1]

    def vector_defaults(
        self, name: str | None, layer: float, scale: float, session: SessionVectors | None = None
    ) -> tuple[int, float]:
        """Quick-mode layer and scale for a vector: its suggested layer (else ``layer``) and its default scale.

        The default scale is its suggested scale (``extra.suggested_scale``), else 0.4x the residual norm at the layer
        over the vector's norm (snapped to the slider's step), else ``scale`` when the residual norm is unknown.
        """
        if not name:
            return _int(layer, "layer"), float(scale)
        entry = VectorSource(self.registry, session or {}).entry(name, "vector")
        suggested_layer = (
            entry.suggested_layer
            if isinstance(entry, VectorEntry) and entry.suggested_layer is not None
            else _int(layer, "layer")
        )
        norm, residual, suggested = self._scale_basis(name, suggested_layer, session)
        if suggested is None and residual is None:
            return suggested_layer, float(scale)
        return suggested_layer, scale_range(norm, residual, suggested).default

    def delete_vector(self, name: str | None, session: SessionVectors | None = None) -> tuple[str, dict[str, Any]]:
        """Delete a registry vector (or one of this session's own). Refused in read-only mode and for shipped vectors.

        Returns:
            A status line.
        """
        session = dict(session or {})
        if not name:
            raise SteeringError("name: no vector selected; pick the vector to delete")
        if name.startswith(SESSION_PREFIX):
            if session.pop(name, None) is None:
                raise SteeringError(f"name: {name!r} is not among this session's vectors; pick one from the list")
            return f"Removed **{escape_markdown(name)}** from this session.", session
        if self.read_only:
            raise SteeringError(READ_ONLY_DELETE.format(name=name))
        if self.registry.is_shipped(name):
            raise SteeringError(
                f"delete: {name!r} ships with the app (a read-only folder), so it cannot be deleted; only vectors created on this server can"
            )
        self.registry.remove(name)
        return f"Deleted **{escape_markdown(name)}**.", session

    def create_vector(
        self,
        name: str,
        description: str,
        layer: float,
        positive_prompts: str,
        negative_prompts: str,
        suggested_scale: float | None,
        overwrite: bool,
        session: SessionVectors | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Make a vector from contrastive prompts (mean activation difference at a layer) and save it.

        It goes into the registry, or, in read-only mode, into this browser session only (as ``session:<name>``).

        Args:
            name: Registry name (letters, digits, '.', '_', '-').
            description: What steering with it does.
            layer: 0-based decoder layer to read activations at (also its suggested layer).
            positive_prompts: One prompt per line showing the concept.
            negative_prompts: One prompt per line showing its opposite.
            suggested_scale: Stored as extra.suggested_scale (quick mode's default scale); 0 or empty for none.
            overwrite: Replace a vector of the same name.

        Returns:
            The new vector's metadata; ``extra.residual_norm`` is the norm of the mean residual stream of all the
            prompts at the layer (what the scale slider compares the scaled vector with).
        """
        session = dict(session or {})
        layer_index = _int(layer, "layer")
        positive, negative = _lines(positive_prompts), _lines(negative_prompts)
        for field, prompts in (("positive_prompts", positive), ("negative_prompts", negative)):
            self.limits.check("max_prompts", len(prompts), field, "use fewer prompts")
        validate_name(name)  # fail on a bad name before the forward passes
        key = SESSION_PREFIX + name
        if self.read_only and key in session and not overwrite:
            raise SteeringError(f"name: {key!r} already exists in this session; tick overwrite or pick another name")
        if not self.read_only and self.registry.is_shipped(name):
            raise SteeringError(f"name: {name!r} is a vector shipped with the app and cannot be replaced; pick another name")
        # mean_difference's two means, kept: their weighted mean's norm is the residual norm the scale slider relates
        # scales to ("2 = about 0.5x the residual norm at layer 8"), recorded at no extra forward pass.
        if not positive or not negative:
            raise SteeringError("prompts: positive_prompts and negative_prompts must both be non-empty")
        pos = self.engine.mean_activations(positive, [layer_index])[layer_index]
        neg = self.engine.mean_activations(negative, [layer_index])[layer_index]
        vector = pos - neg  # = mean_difference(engine, positive, negative, layer)
        residual = (pos * len(positive) + neg * len(negative)) / (len(positive) + len(negative))
        extra: dict[str, Any] = {
            "num_positive": len(positive),
            "num_negative": len(negative),
            "residual_norm": round(float(residual.norm()), 4),
        }
        if suggested_scale not in (None, "", 0):  # a scale of 0 steers nothing, so 0 means "no suggestion"
            extra["suggested_scale"] = float(suggested_scale)
        fields = {
            "description": description or "",
            "model_id": self.engine.model_id,
            "suggested_layer": layer_index,
            "method": "mean-diff",
            "extra": extra,
        }
        if self.read_only:
            session[key] = VectorEntry(name=name, vector=vector, **fields)
            return self._public(session[key], key), session
        entry = self.registry.add(name, vector, overwrite=bool(overwrite), **fields)
        return self._public(entry), session

    def engine_info(self) -> dict[str, Any]:
        """Backend, model, number of layers, hidden size, engine status, registry mode, the limits, how many vectors fit."""
        return {
            **self.engine.info(),
            "status": self.engine.status(),
            "registry": self.registry.root.name,
            "registry_mode": "read-only" if self.read_only else "writable",
            "vectors_fitting": len(self.fitting_vectors()),
            "limits": dataclasses.asdict(self.limits),
        }
