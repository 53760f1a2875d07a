"""Pixel embedding vs an int8 first layer fed normalised input, on digits (issue 6).

Both models: first layer -> Conv2D(16, 3, relu) -> MaxPool -> Flatten -> Dense(10),
float training, then tfqnet QAT (W4/A4; the first conv kept at 8-bit weights in the
baseline, as an int8 first layer), converted and evaluated on the TFLM runtime.

* baseline: float input pixel/16 in [0, 1] -> tfqnet's int8 input grid -> conv1 (W8).
* pixel embedding: raw uint8 pixels -> PixelEmbedding(dim, bits) -> conv1 (W4).

Reports TFLM test accuracy and, per first layer, the int8/int4 bytes of its constants
(table + conv1 kernel + bias) and its MACs (GATHER: none; conv1: H*W*9*Cin*16).
Usage: ``python benchmarks/bench_pixel_embedding.py [--epochs 5] [--seeds 3]``.
"""

from __future__ import annotations

import argparse

import numpy as np

import tfqnet
from tfqnet._keras import keras
from tfqnet.convert.raw_input import convert_raw_input
from tfqnet.datasets import load_digits
from tfqnet.layers import PixelEmbedding
from tfqnet.models import compile_classifier

L = keras.layers


def body(x):
    x = L.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(x)
    x = L.MaxPooling2D(name="pool")(x)
    x = L.Flatten(name="flatten")(x)
    return L.Dense(10, name="logits")(x)


def train(model, x, y, epochs, lr):
    compile_classifier(model, lr)
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return model


def first_layer_cost(flatbuffer: bytes) -> tuple[int, int]:
    """(constant bytes, MACs) of the first layer: GATHER table + first CONV_2D."""
    graph = tfqnet.FlatbufferModel.from_bytes(flatbuffer)
    total, macs = 0, 0
    for op in graph.operators:
        if op.name == "GATHER":
            total += graph.tensors[op.inputs[0]].buffer_bytes
        if op.name == "CONV_2D":
            kernel = graph.tensors[op.inputs[1]]
            out = graph.tensors[op.outputs[0]].shape
            total += sum(graph.tensors[i].buffer_bytes for i in op.inputs[1:] if i >= 0)
            macs = out[1] * out[2] * out[3] * int(np.prod(kernel.shape[1:]))
            break
    return total, macs


def run(seed: int, epochs: int, dim: int, bits: int) -> dict[str, tuple[float, int, int]]:
    d = load_digits()
    pixels_tr = np.clip(np.round(d.x_train * 16) * 16, 0, 255).astype(np.uint8)
    pixels_te = np.clip(np.round(d.x_test * 16) * 16, 0, 255).astype(np.uint8)
    results = {}

    keras.utils.set_random_seed(seed)
    image = keras.Input((8, 8, 1), name="image")
    base = train(keras.Model(image, body(image)), d.x_train, d.y_train, epochs, 2e-3)
    qat = tfqnet.quantize_model(base, weight_bits=4, activation_bits=4,
                                overrides={"conv1": {"weight_bits": 8}})
    train(qat, d.x_train, d.y_train, 1, 5e-4)
    flat = tfqnet.convert(qat, d.x_train)
    acc = float(np.mean(tfqnet.run_tflm(flat, d.x_test).argmax(-1) == d.y_test))
    results["int8 first layer"] = (acc, *first_layer_cost(flat))

    keras.utils.set_random_seed(seed)
    image = keras.Input((8, 8, 1), dtype="uint8", name="image")
    embedded = PixelEmbedding(dim=dim, bits=bits, name="embed")(image)
    model = train(keras.Model(image, body(embedded)), pixels_tr, d.y_train, epochs, 2e-3)
    qat = tfqnet.quantize_model(model, weight_bits=4, activation_bits=4)
    train(qat, pixels_tr, d.y_train, 1, 5e-4)
    flat = convert_raw_input(qat, pixels_tr, input_type="uint8")
    acc = float(np.mean(tfqnet.run_tflm(flat, pixels_te).argmax(-1) == d.y_test))
    results[f"pixel embedding d={dim} Q={bits}"] = (acc, *first_layer_cost(flat))
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--dim", type=int, default=4)
    parser.add_argument("--bits", type=int, default=4)
    args = parser.parse_args()
    per_seed = [run(s, args.epochs, args.dim, args.bits) for s in range(args.seeds)]
    print(f"{'first layer':32s} {'TFLM acc (mean over seeds)':>28s} {'bytes':>7s} {'MACs':>7s}")
    for name in per_seed[0]:
        accs = [r[name][0] for r in per_seed]
        _, size, macs = per_seed[0][name]
        print(f"{name:32s} {np.mean(accs):22.4f} +-{np.std(accs):.4f} {size:7d} {macs:7d}")


if __name__ == "__main__":
    main()
