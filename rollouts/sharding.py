"""Splitting a list of datasets over machines: machine ``offset`` of ``stride`` takes every ``stride``-th one."""

from __future__ import annotations

from collections.abc import Sequence

from vectors import SteeringError

__all__ = ["partition"]


def partition(names: Sequence[str], stride: int = 1, offset: int = 0) -> list[str]:
    """Every ``stride``-th name starting at ``offset`` (machine ``offset`` of ``stride`` takes these).

    The ``stride`` partitions for offsets ``0..stride-1`` are disjoint and together hold every name once.

    Raises:
        SteeringError: ``stride < 1`` or ``offset`` outside ``0..stride-1``.
    """
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise SteeringError(f"dataset_stride: {stride!r} must be an integer >= 1 (1 = every dataset)")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < stride:
        raise SteeringError(f"dataset_offset: {offset!r} must be an integer in 0..{stride - 1} (below dataset_stride={stride})")
    return list(names)[offset::stride]
