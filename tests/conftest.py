"""Shared fixtures: the digits split and a float CNN trained once per test session.

Training is the slow part of the suite, so the float model is trained once and every
test quantizes its own copy (``quantize_model`` never changes its input).

The suite runs with TensorFlow's op determinism on, as any user who wants bit-exact
reruns must: without it the oneDNN CPU kernels sum in an order that depends on thread
scheduling, so two identical seeded runs in one process differ in the last bits of
some gradients (measured: the SRQ checkpoint-resume comparison failed 3 of 3 times with
``PYTHONHASHSEED=3``, 0 of 3 with determinism on, at no measurable step-time cost).
Op determinism does not cover TensorFlow's AddN, whose order depends on thread timing
too; tfqnet's quantizers sum without it (:func:`tfqnet.core.quantizer.ordered_sum`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

import pytest

import tfqnet  # noqa: F401  (first: makes tf.keras tf-keras)
from tfqnet._keras import keras, tf
from tfqnet.datasets import load_digits
from tfqnet.models import compile_classifier, digits_cnn

FLOAT_EPOCHS = 8
#: the slowest test files, run first so that the two xdist workers (setup.cfg) finish
#: together instead of one waiting while the other runs a long file at the end
SLOW_FILES_FIRST = ("test_resume.py", "test_distribute.py", "test_quantize.py",
                    "test_srq.py", "test_method_contract.py", "test_policy.py")

tf.config.experimental.enable_op_determinism()

_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None)


@pytest.fixture(autouse=True)
def _unregister_traced_custom_gradients():
    """Drops the gradient functions TensorFlow registered while a test traced.

    Every trace of a Keras train step registers a ``CustomGradient-N`` function (the
    optimizer's gradient all-reduce) in TensorFlow's global gradient registry, which
    holds the traced graph and never lets it go (measured: 23 MB kept per QAT fit of
    the digits CNN, 1 MB with this; 8 cycles). A registration is read only while its
    step is being traced, so once a test is over none is needed any more.
    """
    yield
    from tensorflow.python.framework import ops  # after tfqnet, which must come first

    registry = getattr(getattr(ops, "_gradient_registry", None), "_registry", None)
    if isinstance(registry, dict):
        for name in [name for name in registry if name.startswith("CustomGradient-")]:
            del registry[name]


@pytest.fixture(autouse=True, scope="module")
def _return_freed_memory_after_each_module():
    """Hands the memory a test module freed back to the system: glibc keeps freed
    blocks mapped (about 70 MB per quantize-fit-convert cycle of the digits CNN) until
    ``malloc_trim``."""
    yield
    gc.collect()
    if hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


@pytest.fixture(scope="session")
def digits():
    return load_digits()


@pytest.fixture(scope="session")
def float_digits_model(digits):
    """The baseline digits CNN, trained in float (seed 0). Do not modify it."""
    keras.utils.set_random_seed(0)
    model = compile_classifier(digits_cnn(), 1e-3)
    model.fit(digits.x_train, digits.y_train, epochs=FLOAT_EPOCHS, batch_size=32, verbose=0)
    return model


def pytest_collection_modifyitems(items):
    rank = {name: index for index, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable
