"""The Compare tab's handlers: the streamed side-by-side comparison, multi-turn chat (new chat, regenerate) and Stop.

Steering always travels with the request (``steering=[None, spec]``): no handler changes the engine's global steering
state, so concurrent users never see each other's specs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import gradio as gr

from app.chat import ChatHistory, add_turn, drop_last_turn, new_chat, turn_prompts
from app.context import AppContext, build_prompt, logger
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
from app.spec_editor import SessionVectors
from app.stamps import describe_rows, stamps
from app.steering_controls import SteeringControls
from engine import EngineDeadError
from engine.generation import Prompt
from vectors import SteeringError

__all__ = ["CHAT_NEEDS_TEMPLATE", "ENGINE_DEAD", "GENERATE_LABEL", "RESTART_LABEL", "CompareHandlers", "CompareOutput"]

GENERATE_LABEL = "Generate"
RESTART_LABEL = "Restart (cancels the running comparison)"
CompareOutput = tuple[Any, ...]  # the four pane strings, then the chat history (a gr.State)
ENGINE_DEAD = "engine: the model engine stopped and could not be restarted; try again later (the operator must restart the app)"
CHAT_NEEDS_TEMPLATE = "chat_mode: multi-turn chat needs the chat template; untick raw completion (or chat mode)"
# How long Stop's lines wait for the session's streams to close (one busy in a step closes when the step is done);
# after this, the lines the page shows are kept, with "stopped" for "generating…"/"waiting…".
STOP_WAIT_S = 10.0
# The shortest gap between two streamed page updates of one comparison (a pane's first text and its end are sent at
# once): ~20 updates a second read as smooth text while the server's per-update work stays a small share.
UPDATE_INTERVAL_S = 0.05
# How long Stop keeps trying to close a stream, on a thread of its own: one waiting for the engine behind other users'
# runs closes once it has the engine and its first step is done (so it never holds the engine afterwards).
STOP_CLOSE_S = 1800.0


def _session(request: gr.Request | None) -> str | None:
    return request.session_hash if request and request.session_hash else None


class CompareHandlers(AppContext):
    """Compare, regenerate, new chat, the Generate button's label and Stop's stats lines."""

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
        controls = SteeringControls.from_args(locals())
        if chat_mode and raw_completion:
            raise SteeringError(CHAT_NEEDS_TEMPLATE)
        if chat_mode:
            build_prompt(prompt, system_prompt, False)  # the same checks of the message
            prompts: list[Prompt] = list(turn_prompts(history, prompt, system_prompt))
        else:
            prompts = [build_prompt(prompt, system_prompt, raw_completion)] * len(SIDES)
        for side_prompt in prompts:
            self.check_prompt(side_prompt)
        spec = self.spec(controls)
        config = self.config(len(SIDES), max_new_tokens, temperature, top_p, seed)
        labels = stamps("; ".join(describe_rows(self.setup_rows(controls))), spec, config)
        status = self.engine.status()
        if status == "dead":
            raise SteeringError(ENGINE_DEAD)
        run = self.runs.start(_session(request) or f"anonymous-{id(spec)}")
        if status == "restarting":
            yield (*notice(ENGINE_RESTARTING_WAIT, ENGINE_RESTARTING_STATS), history)  # the call below waits for it
        panes = [Pane() for _ in SIDES]

        def stats(stopped: bool) -> tuple[str, ...]:
            return tuple(f"{p.stats(stopped)}  \n{label}" for p, label in zip(panes, labels, strict=True))

        def output(stopped: bool = False, turns: ChatHistory | None = history) -> CompareOutput:
            return (*(p.text for p in panes), *stats(stopped), turns)

        self.runs.show(run, stats)  # what Stop writes once this stream has ended
        stream = None
        try:
            stream = self.engine.generate_stream(prompts, config, steering=[spec if side.steered else None for side in SIDES])
            self.runs.closes_with(run, stream.close)  # Stop closes it: a cancelled generator may wait for the GC
            shown = 0.0  # when the page was last sent the panes
            for event in stream:
                if not self.runs.is_current(run):
                    return  # a newer Generate of this session took over: its output fills the panes
                pane = panes[event.index]
                first_text = not pane.text
                pane.push(event)
                now = time.monotonic()
                # A pane's first text and its end go out at once (time to first token); tokens in between at most
                # every UPDATE_INTERVAL_S: one page update per token and pane cost the server ~10% more CPU per
                # token (bench ui). The final yield below sends whatever is still unsent.
                if (first_text and pane.text) or event.finished or now - shown >= UPDATE_INTERVAL_S:
                    shown = now
                    yield output()
            stopped = not self.runs.active(run)  # Stop closed the stream: the loop ended early
        except EngineDeadError as exc:  # it died under this request: nothing ran, the next click will
            logger.warning("compare: %s", exc)
            yield (*notice(ENGINE_RESTARTING_RETRY, ENGINE_RESTARTING_STATS), history)
            return
        finally:
            if stream is not None:
                stream.close()  # on Stop, Gradio drops this generator: closing the stream ends the engine request
            self.runs.finish(run)
        if stopped:  # a stopped turn is not kept
            yield output(stopped=True)
            return
        # Only a turn that ran to its end joins the conversation (a stopped or restarted one never gets here).
        turns = add_turn(history, prompts[0][-1]["content"], [p.text for p in panes]) if chat_mode else history
        yield output(stopped=True, turns=turns)

    def regenerate(
        self,
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
        history: ChatHistory | None = None,
        request: gr.Request | None = None,
    ) -> Iterator[CompareOutput]:
        """Run the conversation's last turn again (multi-turn chat): drop it from both sides' history and send the
        same user message to both panes, streaming as /compare does.

        Args:
            system_prompt: Optional system message, put in front of the turn as for /compare.
            vector: The steering controls and sampling settings from here on, as for /compare (a new seed or new
                steering gives a new reply; the same ones at temperature 0 give the same reply back).

        Returns:
            Baseline text, steered text, baseline stats, steered stats, as for /compare; the history then holds the
            new replies in place of the dropped ones.

        Raises:
            SteeringError: The conversation has no turn yet.
        """
        # every control and sampling setting goes to /compare as it came (by name), with the dropped turn's message
        settings = {name: value for name, value in locals().items() if name not in ("self", "history", "request")}
        earlier, message = drop_last_turn(history)
        yield from self.compare(message, **settings, chat_mode=True, history=earlier, request=request)

    def new_chat(self, request: gr.Request | None = None) -> tuple[ChatHistory, str, str, str, str]:
        """Start a new conversation: empty histories and empty panes.

        Returns:
            The empty history, then baseline text, steered text and both stats lines, all empty.
        """
        session = _session(request)
        if session:
            self.runs.forget(session)  # Stop must not bring back the cleared panes' stats
        return new_chat(), "", "", "", ""

    def generate_label(self, request: gr.Request | None = None) -> str:
        """The Generate button's label: "Restart" while a comparison of this session streams (a click restarts it)."""
        session = _session(request)
        return RESTART_LABEL if session and self.runs.streaming(session) else GENERATE_LABEL

    @staticmethod
    def stopped_stats(*stats: str) -> tuple[str, ...]:
        """Stats lines after Stop: a line still saying "generating…" or "waiting for the model…" says "stopped"."""
        return tuple((line or "").replace(GENERATING, STOPPED).replace(WAITING, STOPPED) for line in stats)

    def stop_stats(self, baseline_stats: str, steered_stats: str, request: gr.Request | None = None) -> tuple[str, str]:
        """Stop: end this session's streams (the engine is free at once), then the final stats lines from the
        server's own counts.

        Queued after the cancel, this event's output reaches the page after every update the stream sent, so the
        lines never go back to "generating…". Lines that never said "generating…" (the run was still waiting, or
        had ended) get :meth:`stopped_stats` of what the page shows.
        """
        lines = (baseline_stats or "", steered_stats or "")
        session = _session(request)
        if session is None:
            return self.stopped_stats(*lines)  # type: ignore[return-value]
        closed = self.runs.stop_soon(session, STOP_CLOSE_S)
        if not any(GENERATING in line for line in lines):  # still waiting (or over): nothing streamed to count
            return self.stopped_stats(*lines)  # type: ignore[return-value]
        idle = closed.wait(STOP_WAIT_S) and not self.runs.streaming(session)
        view = self.runs.view(session) if idle else None
        return view(True) if view else self.stopped_stats(*lines)  # type: ignore[return-value]
