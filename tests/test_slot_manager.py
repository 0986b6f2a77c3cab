"""The vLLM driver's slot bookkeeping (no engine needed)."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from engine.vllm_backend import SlotManager  # noqa: E402


def test_identical_specs_share_and_busy_slots_are_never_reused():
    m = SlotManager(2)
    assert m.acquire("a") == (1, True)
    assert m.acquire("a") == (1, False)  # same content, same slot, no upload
    assert m.acquire("b") == (2, True)
    assert m.acquire("c") is None  # both in use: the request waits
    m.release(2)
    assert m.acquire("c") == (2, True)  # idle slot reused (LRU), "b" must be uploaded again later
    assert "b" not in m.by_key and m.in_use() == 2


def test_forgotten_contents_free_the_slot_exactly_once_in_either_order():
    m = SlotManager(2)
    slot, _ = m.acquire("a")
    m.forget("a")  # upload failed while a request held the slot
    assert slot not in m.free
    m.release(slot)
    assert m.free.count(slot) == 1
    slot, _ = m.acquire("b")
    m.release(slot)
    m.forget("b")
    assert m.free.count(slot) == 1 and m.acquire("b")[1] is True
