"""Quantization methods: which quantizer a layer's weights and activations get.

A method is chosen by name in :func:`tfqnet.quantize_model`. Each method module in
:mod:`tfqnet.quantizers` defines its quantizers and registers one
:class:`QuantizationMethod` subclass with :func:`register_method`; the registry here is
all the rest of tfqnet knows of methods.
"""

from __future__ import annotations

import abc
import inspect
from typing import Any, ClassVar

from tfqnet.core.quantizer import Quantizer

_METHODS: dict[str, type[QuantizationMethod]] = {}


class QuantizationMethod(abc.ABC):
    """Builds the quantizers of one method. Options arrive as keyword arguments."""

    name: ClassVar[str]
    #: Dense kernels per output channel instead of per tensor (int8 containers only:
    #: TFLM has no per-channel INT4 FULLY_CONNECTED; see tfqnet.grid)
    per_channel_dense: bool = False

    def __init__(self, **options: Any) -> None:
        if options:
            raise TypeError(
                f"method {self.name!r} takes no option(s) {sorted(options)}; "
                f"see help(tfqnet.quantizers.{type(self).__module__.rsplit('.', 1)[-1]})."
            )

    #: the model's weight bits when ``quantize_model`` is given none
    default_weight_bits: int = 8

    def resolve_weight_bits(self, requested: int | None) -> int:
        """The model's weight bits: ``requested``, or the method's default for None.

        A method whose options decide the bits (a level set, a ternary method) returns
        them for None and raises ValueError, with the fix, for a ``requested`` that
        contradicts them, so no option is dropped silently.
        """
        return self.default_weight_bits if requested is None else requested

    @abc.abstractmethod
    def weight_quantizer(self, bits: int, per_axis: bool, channel_dims: int) -> Quantizer:
        """Quantizer for a kernel; ``channel_dims`` trailing axes form the output channel."""

    @abc.abstractmethod
    def activation_quantizer(self, bits: int) -> Quantizer:
        """Quantizer for a layer output / activation."""


def register_method(cls: type[QuantizationMethod]) -> type[QuantizationMethod]:
    _METHODS[cls.name] = cls
    return cls


def method_options(cls: type[QuantizationMethod]) -> list[str]:
    """The option names a method takes: the keyword parameters of its ``__init__``."""
    parameters = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in parameters if p.name != "self"
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def get_method(name: str, **options: Any) -> QuantizationMethod:
    """The method ``name`` built with ``options``; ValueError for an unknown method,
    TypeError naming the method's options for an option it does not take (checked
    here, before the method's ``__init__`` sees them)."""
    if not isinstance(name, str) or name not in _METHODS:
        raise ValueError(
            f"unknown quantization method {name!r}; choose one of {sorted(_METHODS)}."
        )
    cls = _METHODS[name]
    known = method_options(cls)
    unknown = sorted(set(options) - set(known))
    if unknown:
        takes = f"its options are {', '.join(known)}" if known else "it takes no options"
        raise TypeError(
            f"method {name!r} has no option {', '.join(map(repr, unknown))}; {takes} "
            f"(see help(tfqnet.quantizers.{cls.__module__.split('.')[2]}))."
        )
    return cls(**options)


def method_names() -> list[str]:
    return sorted(_METHODS)
