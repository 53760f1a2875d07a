"""Reference models used by the example, the tests and the benchmarks."""

from __future__ import annotations

from tfqnet._keras import keras


def digits_cnn(input_shape: tuple[int, int, int] = (8, 8, 1), classes: int = 10) -> keras.Model:
    """The baseline CNN of BENCHMARKS.md (logits out; about 150k parameters).

    Conv2D(16, 3, same, no bias)-BN-ReLU-Conv2D(32, 3, same, relu)-MaxPool-Flatten-
    Dense(64, relu)-Dense(classes).
    """
    L = keras.layers
    inputs = keras.Input(input_shape, name="image")
    x = L.Conv2D(16, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(name="relu1")(x)
    x = L.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    x = L.MaxPooling2D(name="pool")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(64, activation="relu", name="fc1")(x)
    outputs = L.Dense(classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


def compile_classifier(model: keras.Model, lr: float) -> keras.Model:
    """Compiles a logits classifier the way the example, tests and benchmarks train it:
    Adam(lr), sparse categorical cross-entropy on logits, accuracy."""
    model.compile(
        keras.optimizers.Adam(lr),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model
