"""Multi-turn chat side by side: each pane keeps its own conversation.

The user's turns go to both panes; the baseline continues from its own unsteered replies and the steered pane from
its steered ones, so the conversations drift apart as they would for two users. A conversation is a list of
``{"role", "content"}`` messages (no system message: the system prompt box is put in front of every turn, so
changing it applies from the next turn). A turn is kept only when both replies finished: a stopped or restarted
turn is dropped, "Regenerate" runs the last turn's user message again in place of that turn, and "New chat" starts
over.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from app.sides import SIDES
from engine.generation import ChatMessage
from vectors import SteeringError

__all__ = ["NO_TURN_YET", "ChatHistory", "add_turn", "chat_views", "drop_last_turn", "new_chat", "turn_prompts"]

ChatHistory = dict[str, list[ChatMessage]]  # side key -> that side's conversation so far
NO_TURN_YET = "Regenerate: no turn yet; send a message first"


def new_chat() -> ChatHistory:
    """An empty conversation per side."""
    return {side.key: [] for side in SIDES}


def _history(history: Mapping[str, Any] | None) -> ChatHistory:
    if not history:
        return new_chat()
    if not isinstance(history, Mapping) or not all(isinstance(history.get(side.key, []), list) for side in SIDES):
        raise SteeringError("history: not a conversation per side; press New chat")
    return {side.key: list(history.get(side.key, [])) for side in SIDES}


def turn_prompts(history: Mapping[str, Any] | None, prompt: str, system_prompt: str | None) -> list[list[ChatMessage]]:
    """Each side's messages for the next turn: the system prompt, that side's conversation, the new user message."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt and system_prompt.strip() else []
    turns = _history(history)
    return [[*system, *turns[side.key], {"role": "user", "content": prompt}] for side in SIDES]


def add_turn(history: Mapping[str, Any] | None, prompt: str, replies: Sequence[str]) -> ChatHistory:
    """A new history with this turn appended: the user message and each side's own reply."""
    turns = _history(history)
    for side, reply in zip(SIDES, replies, strict=True):
        turns[side.key] += [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
    return turns


def drop_last_turn(history: Mapping[str, Any] | None) -> tuple[ChatHistory, str]:
    """The history without its last turn (both sides), and that turn's user message (the same on both sides).

    Raises:
        SteeringError: No turn yet (:data:`NO_TURN_YET`), or the sides' histories do not end in the same turn.
    """
    turns = _history(history)
    last = [turns[side.key][-2:] for side in SIDES]
    if not all(len(pair) == 2 for pair in last):
        raise SteeringError(NO_TURN_YET)
    messages = {pair[0].get("content") if pair[0].get("role") == "user" else None for pair in last}
    if len(messages) != 1 or None in messages or any(pair[1].get("role") != "assistant" for pair in last):
        raise SteeringError("history: the sides do not end in the same user turn; press New chat")
    return {side.key: turns[side.key][:-2] for side in SIDES}, str(messages.pop())


def chat_views(history: Mapping[str, Any] | None) -> tuple[list[ChatMessage], ...]:
    """What each side's ``gr.Chatbot`` shows (its messages, in order)."""
    turns = _history(history)
    return tuple(turns[side.key] for side in SIDES)
