"""Stratified train/val/test splits and subsets with a fixed seed (scikit-learn's train_test_split)."""
from __future__ import annotations

from typing import Optional

import numpy as np
from sklearn.model_selection import train_test_split


def part_size(labels: np.ndarray, fraction: float) -> int:
    """``fraction`` of the items as a count, at least one per class so stratification stays possible."""
    return max(len(np.unique(labels)), round(fraction * len(labels)))


def carve(idx: np.ndarray, labels: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` into (rest, a stratified part of ``n`` items)."""
    rest, part = train_test_split(idx, test_size=n, stratify=labels[idx], random_state=seed)
    return np.sort(rest), np.sort(part)


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
