"""The SRQ flash-budget allocation, in plain Python (no TensorFlow).

A learned layer is seen as ``costs``, its kernel's bytes at widths ``MIN_BITS``,
``MIN_BITS + 1``, ... (index ``width - MIN_BITS``; bytes never fall as the width
grows), and ``logits``, the logits of its keep-gates of widths ``MIN_BITS + 1`` ...
(a gate is kept iff its logit is > 0). ``fixed`` is the bytes of the kernels whose
width is not learned and ``budget`` the budget in bytes. The TensorFlow side
(:mod:`tfqnet.quantizers.srq.freeze`) reads these numbers from the quantizers.
"""

from __future__ import annotations

from collections.abc import Sequence

MIN_BITS = 2
BYTES_PER_KB = 1024


def kept_ladder(keep: Sequence[bool], lowest: int = MIN_BITS) -> int:
    """``lowest +`` the number of consecutive kept gates from the first."""
    width = lowest
    for kept in keep:
        if not kept:
            break
        width += 1
    return width


def check_feasible(fixed: int, costs: Sequence[Sequence[int]], target_kb: float) -> None:
    """Raises ``ValueError`` when ``target_kb`` is below every learned layer at its
    cheapest width plus the fixed bytes."""
    smallest = fixed + sum(layer[0] for layer in costs)
    budget = target_kb * BYTES_PER_KB
    if budget < smallest:
        raise ValueError(
            f"target_weight_kb={target_kb:g} ({budget:.0f} bytes) is below the smallest "
            f"model SRQ can export, {smallest} bytes ({smallest / BYTES_PER_KB:.2f} KB: "
            "every learned kernel at 2 bits, stored as packed INT4 (or, with "
            "storage='compressed', as 2-bit indices where smaller), the other kernels at "
            "their fixed widths). Raise the target, or skip/shrink layers."
        )


def decided_widths(
    fixed: int, costs: Sequence[Sequence[int]], budget: float
) -> list[int] | None:
    """Each layer's cap (its widest width that fits the budget with every other layer at
    its cheapest) when all caps fit at once, else None (the budget leaves a trade)."""
    cheapest = [layer[0] for layer in costs]
    floor = fixed + sum(cheapest)
    caps = [
        max(MIN_BITS + i for i, cost in enumerate(layer) if floor - low + cost <= budget)
        for layer, low in zip(costs, cheapest, strict=True)
    ]
    at_caps = sum(layer[cap - MIN_BITS] for layer, cap in zip(costs, caps, strict=True))
    return caps if fixed + at_caps <= budget else None


def project(
    widths: Sequence[int],
    costs: Sequence[Sequence[int]],
    logits: Sequence[Sequence[float]],
    movable: Sequence[bool],
    fixed: int,
    budget: float,
) -> list[int]:
    """The widths fitted to ``budget`` (only layers with ``movable`` true change).

    While over budget, one layer steps down to its next width with fewer bytes: the one
    whose gate of the lowest dropped bit has the lowest logit (ties: the first layer).
    Then room is given back, pass after pass until nothing changes: layers whose next
    bit costs bytes, highest logit of that gate first, get the widest width the budget
    allows up to the ladder of kept gates above their width. Raises ``ValueError`` when
    no movable layer can step down and the widths are over budget.
    """
    widths = list(widths)
    moving = [i for i, free in enumerate(movable) if free]

    def total() -> int:
        return fixed + sum(layer[w - MIN_BITS] for layer, w in zip(costs, widths, strict=True))

    def gate_logit(i: int, width: int) -> float:
        """The logit of layer ``i``'s gate that keeps bit ``width``."""
        return logits[i][width - MIN_BITS - 1]

    def cheaper(i: int) -> int | None:
        layer, width = costs[i], widths[i]
        fewer = [b for b in range(MIN_BITS, width)
                 if layer[b - MIN_BITS] < layer[width - MIN_BITS]]
        return max(fewer) if fewer else None

    while total() > budget:
        steps = [(i, cheaper(i)) for i in moving if cheaper(i) is not None]
        if not steps:
            raise ValueError(
                f"the frozen SRQ widths need {total()} bytes, over the budget of "
                f"{budget:.0f}; unfreeze them (assign 0 to the srq_frozen_bits weights) "
                "or raise target_weight_kb."
            )
        i, width = min(steps, key=lambda step: gate_logit(step[0], step[1] + 1))
        widths[i] = width

    # The budget loss pushes every over-budget gate down at once (Adam's steps do not
    # scale with a bit's bytes), so give back the room it over-freed.
    def next_bit_costs(i: int) -> bool:
        layer, width = costs[i], widths[i]
        return (width < MIN_BITS + len(layer) - 1
                and layer[width + 1 - MIN_BITS] > layer[width - MIN_BITS])

    changed = True
    while changed:
        changed = False
        ranked = sorted((i for i in moving if next_bit_costs(i)),
                        key=lambda i: gate_logit(i, widths[i] + 1), reverse=True)
        for i in ranked:
            width = widths[i]
            # the layer has its bits up to width and gets the next one: the ladder from
            # there is the kept gates above it (a gate below the width that training
            # dropped must not stop it)
            keep = [j < width + 1 - MIN_BITS or logit > 0.0
                    for j, logit in enumerate(logits[i])]
            for wider in range(kept_ladder(keep), width, -1):
                if total() - costs[i][width - MIN_BITS] + costs[i][wider - MIN_BITS] <= budget:
                    widths[i], changed = wider, True
                    break
    return widths
