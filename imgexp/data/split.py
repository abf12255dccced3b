"""Stratified train/val/test splits and subsets with a fixed seed: every class gives its share of a part
(largest remainders round up), its members drawn at random."""
from __future__ import annotations

from typing import Optional

import numpy as np


def part_size(labels: np.ndarray, fraction: float) -> int:
    """``fraction`` of the items as a count, at least one per class so stratification stays possible."""
    return max(len(np.unique(labels)), round(fraction * len(labels)))


def carve(idx: np.ndarray, labels: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` into (rest, a stratified part of ``n`` items)."""
    rng = np.random.default_rng(seed)
    inverse, counts = np.unique(labels[idx], return_inverse=True, return_counts=True)[1:]
    share = counts * n / len(idx)
    take = np.floor(share).astype(int)
    take[np.argsort(take - share, kind="stable")[: n - take.sum()]] += 1
    part = np.concatenate([rng.choice(idx[inverse == c], size=k, replace=False) for c, k in enumerate(take)])
    return np.setdiff1d(idx, part), np.sort(part)


def stratified_split(
    labels: np.ndarray, val_fraction: float, test_fraction: Optional[float], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index arrays (train, val, test), each class in the same proportion in every part; fractions are of
    the whole. With ``test_fraction=None`` only val is carved out and test is empty."""
    idx = np.arange(len(labels))
    test = np.array([], dtype=int)
    if test_fraction is not None:
        idx, test = carve(idx, labels, part_size(labels, test_fraction), seed)
    train, val = carve(idx, labels, part_size(labels, val_fraction), seed)
    return train, val, test


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of a stratified random sample of ``n`` items (all of them when ``n >= len(labels)``)."""
    if n >= len(labels):
        return np.arange(len(labels))
    _, keep = carve(np.arange(len(labels)), labels, n, seed)
    return keep
