"""QN's level sets: the ordered integer levels ``Y`` a weight can take.

Every level is an integer, so every level is an integer multiple of ``alpha`` and
lands on the export grid exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tfqnet import grid

#: level sets of the paper, by name
LEVEL_SETS: dict[str, tuple[int, ...]] = {
    "binary": (-1, 1),
    "ternary": (-1, 0, 1),
    "3bit": (-2, -1, 0, 1, 2),
    "3bit_pow2": (-4, -2, -1, 0, 1, 2, 4),
}


def uniform_levels(bits: int) -> tuple[int, ...]:
    """The symmetric narrow-range ``bits``-bit set ``{-qmax .. qmax}``."""
    qmax = grid.weight_qmax(grid.check_bits(bits, "bits"))
    return tuple(range(-qmax, qmax + 1))


def parse_levels(levels: str | int | Sequence[int]) -> tuple[int, ...]:
    """A level set given by name, bit-width (``"4bit_uniform"`` or 4) or integer list."""
    if isinstance(levels, str):
        if levels in LEVEL_SETS:
            return LEVEL_SETS[levels]
        if levels.endswith("bit_uniform") and levels[: -len("bit_uniform")].isdigit():
            return uniform_levels(int(levels[: -len("bit_uniform")]))
        raise ValueError(
            f"unknown level set {levels!r}; use one of {sorted(LEVEL_SETS)}, "
            "'<k>bit_uniform' or a list of integers."
        )
    if isinstance(levels, int) and not isinstance(levels, bool):
        return uniform_levels(levels)
    values = list(levels)
    if not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values):
        raise ValueError(f"explicit levels must be integers, got {levels!r}.")
    parsed = tuple(sorted({int(v) for v in values}))
    if len(parsed) < 2:
        raise ValueError(f"a level set needs at least two levels, got {levels!r}.")
    if max(abs(v) for v in parsed) > grid.weight_qmax(8):
        raise ValueError(f"levels must lie in [-127, 127] (int8 codes), got {levels!r}.")
    return parsed


def required_bits(levels: Sequence[int]) -> int:
    """Fewest weight bits whose narrow-range codes hold every level."""
    largest = max(abs(v) for v in levels)
    return next(b for b in grid.WEIGHT_BITS if grid.weight_qmax(b) >= largest)


def is_uniform(levels: Sequence[int]) -> bool:
    return all(b - a == 1 for a, b in zip(levels[:-1], levels[1:], strict=True))
