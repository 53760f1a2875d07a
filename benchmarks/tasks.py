"""The benchmark suite's tasks: a model builder and its data, with raw-pixel copies.

* ``digits``: :func:`tfqnet.models.digits_cnn` on scikit-learn's 8x8 digits.
* ``mobilenet``: :func:`tfqnet.models.mobilenet_v2_tiny` (depthwise convolutions,
  residual adds) on the same digits upsampled to 16x16 (bilinear, deterministic).
* ``hard``: the same model on those 16x16 digits, each rotated (up to 20 degrees),
  shifted (up to 2 pixels) and noised (Gaussian, sigma 0.15, clipped to [0, 1]) by a
  seeded generator: a task where low-bit weights lose accuracy that digits hides.

Both use the stratified split of :func:`tfqnet.datasets.load_digits`. Images are
``value / 16`` in [0, 1]; the raw 8-bit pixels for the pixel-embedding rows are
``round(256 * x)`` clipped to 255 (the digits' own ``value * 16``), so the float
models' input is ``pixel / 256`` (:data:`PIXEL_SCALE`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tfqnet._keras import keras, tf
from tfqnet.datasets import load_digits
from tfqnet.models import digits_cnn, mobilenet_v2_tiny

#: normalised input = PIXEL_SCALE * raw pixel (see the module docstring)
PIXEL_SCALE = 1.0 / 256.0


def to_pixels(x: np.ndarray) -> np.ndarray:
    """Images in [0, 1] -> raw uint8 pixels ``round(256 x)`` (255 at most)."""
    return np.clip(np.round(np.asarray(x, np.float64) / PIXEL_SCALE), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Task:
    name: str
    short: str  # for plots and column headers
    title: str
    build: Callable[[], keras.Model]  # a fresh float model (weights=None)
    float_lr: float
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def pixels_train(self) -> np.ndarray:
        return to_pixels(self.x_train)

    @property
    def pixels_test(self) -> np.ndarray:
        return to_pixels(self.x_test)

    def subset(self, train: int | None, test: int | None) -> Task:
        """The first ``train``/``test`` samples (None: all); the split is already shuffled."""
        return Task(self.name, self.short, self.title, self.build, self.float_lr,
                    self.x_train[:train], self.y_train[:train],
                    self.x_test[:test], self.y_test[:test])


def _upsample(x: np.ndarray, size: int) -> np.ndarray:
    return np.clip(tf.image.resize(x, (size, size), method="bilinear").numpy(), 0.0, 1.0)


def digits_task() -> Task:
    d = load_digits()
    return Task("digits", "digits CNN", "digits CNN (8x8 digits, `tfqnet.models.digits_cnn`)",
                digits_cnn, 1e-3, d.x_train, d.y_train, d.x_test, d.y_test)


def mobilenet_task() -> Task:
    d = load_digits()
    return Task(
        "mobilenet",
        "MobileNetV2-style",
        "MobileNetV2-style (digits upsampled to 16x16, `tfqnet.models.mobilenet_v2_tiny`)",
        mobilenet_v2_tiny, 2e-3,
        _upsample(d.x_train, 16), d.y_train, _upsample(d.x_test, 16), d.y_test,
    )


TASKS: dict[str, Callable[[], Task]] = {"digits": digits_task, "mobilenet": mobilenet_task}


def _distort(x: np.ndarray, seed: int) -> np.ndarray:
    from scipy import ndimage  # lazy: only this task needs it

    rng = np.random.default_rng(seed)
    out = np.empty_like(x)
    for i, image in enumerate(x[..., 0]):
        image = ndimage.rotate(image, rng.uniform(-20, 20), reshape=False, order=1)
        image = ndimage.shift(image, rng.uniform(-2, 2, size=2), order=1)
        out[i, ..., 0] = image + rng.normal(0.0, 0.15, image.shape)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def hard_task() -> Task:
    base = mobilenet_task()
    return Task(
        "hard", "distorted digits",
        "MobileNetV2-style on distorted digits (16x16, rotated, shifted, noised)",
        mobilenet_v2_tiny, 2e-3,
        _distort(base.x_train, 1), base.y_train, _distort(base.x_test, 2), base.y_test,
    )
