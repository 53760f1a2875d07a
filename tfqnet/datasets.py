"""Small datasets that ship with installed packages (no downloads at run time)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Split(NamedTuple):
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits(test_size: float = 0.25, random_state: int = 0) -> Split:
    """scikit-learn's 8x8 digits as NHWC float32 in [0, 1] (pixel / 16).

    The split is stratified with ``random_state`` so every run, test and benchmark
    sees the same test set (the one the baselines in BENCHMARKS.md use).
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    digits = sk_load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[..., None]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, stratify=y, random_state=random_state
    )
    return Split(x_train, y_train, x_test, y_test)
