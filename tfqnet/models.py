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


def mobilenet_v2_tiny(
    input_shape: tuple[int, int, int] = (16, 16, 1), classes: int = 10
) -> keras.Model:
    """A small MobileNetV2-style network (weights=None, about 25k parameters): the
    benchmarks' model with depthwise convolutions and residual adds.

    Stem Conv2D(16, 3, same, no bias)-BN-ReLU6, then four inverted-residual blocks
    (1x1 expand-BN-ReLU6, 3x3 DepthwiseConv2D-BN-ReLU6, 1x1 project-BN, linear
    bottleneck) of (expansion, out channels, stride) = (3, 24, 2), (3, 24, 1), (3, 32, 2),
    (3, 32, 1); the stride-1 blocks add their input (residual Add). Then a 1x1
    Conv2D(64)-BN-ReLU6 head, GlobalAveragePooling2D and Dense(classes) logits. Sized
    for digits upsampled to 16x16 (feature maps 16 -> 8 -> 4). BatchNormalization uses
    momentum 0.9, not 0.99: on a ~40-batch epoch the slower moving statistics still lag
    the weights after ten epochs and inference accuracy stays near chance.
    """
    L = keras.layers
    inputs = keras.Input(input_shape, name="image")
    x = L.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = L.BatchNormalization(momentum=0.9, name="stem_bn")(x)
    x = L.ReLU(6.0, name="stem_relu")(x)
    for index, (expansion, channels, stride) in enumerate(
        [(3, 24, 2), (3, 24, 1), (3, 32, 2), (3, 32, 1)], start=1
    ):
        block = f"block{index}"
        shortcut = x
        x = L.Conv2D(expansion * int(x.shape[-1]), 1, use_bias=False, name=f"{block}_expand")(x)
        x = L.BatchNormalization(momentum=0.9, name=f"{block}_expand_bn")(x)
        x = L.ReLU(6.0, name=f"{block}_expand_relu")(x)
        x = L.DepthwiseConv2D(3, stride, padding="same", use_bias=False,
                              name=f"{block}_depthwise")(x)
        x = L.BatchNormalization(momentum=0.9, name=f"{block}_depthwise_bn")(x)
        x = L.ReLU(6.0, name=f"{block}_depthwise_relu")(x)
        x = L.Conv2D(channels, 1, use_bias=False, name=f"{block}_project")(x)
        x = L.BatchNormalization(momentum=0.9, name=f"{block}_project_bn")(x)
        if stride == 1 and int(shortcut.shape[-1]) == channels:
            x = L.Add(name=f"{block}_add")([shortcut, x])
    x = L.Conv2D(64, 1, use_bias=False, name="head")(x)
    x = L.BatchNormalization(momentum=0.9, name="head_bn")(x)
    x = L.ReLU(6.0, name="head_relu")(x)
    x = L.GlobalAveragePooling2D(name="pool")(x)
    outputs = L.Dense(classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="mobilenet_v2_tiny")
