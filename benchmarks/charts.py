"""PNG plots of the benchmark suite (matplotlib, the ``bench`` extra).

* :func:`pareto_plot`: TFLM accuracy vs flatbuffer bytes per task, one point per row
  (mean over seeds, error bar = spread), with the Pareto front (no other row is both
  smaller and more accurate) drawn through the rows on it.
* :func:`bits_plot`: the per-layer weight bits SRQ learned under the budget.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on CI or a server
import matplotlib.pyplot as plt  # noqa: E402

#: (row name prefix, colour): baselines grey/orange, tfqnet blue
_COLOURS = (("float", "0.45"), ("post-training", "0.45"), ("TFMOT", "tab:orange"),
            ("tfqnet", "tab:blue"))


def _colour(name: str) -> str:
    return next((c for prefix, c in _COLOURS if name.startswith(prefix)), "tab:green")


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (bytes, accuracy) that no other point beats on both
    counts (at most as many bytes and at least the accuracy, one of them strictly),
    in order of bytes."""
    front = []
    for i, (size, acc) in enumerate(points):
        dominated = any(
            (s <= size and a >= acc) and (s < size or a > acc)
            for j, (s, a) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def pareto_plot(tasks: Mapping[str, Sequence[dict]], path: Path) -> Path:
    """``tasks``: title -> rows ``{"name", "bytes", "acc", "acc_spread"}``; writes ``path``."""
    fig, axes = plt.subplots(1, len(tasks), figsize=(9.5 * len(tasks), 6.0), squeeze=False)
    for ax, (title, rows) in zip(axes[0], tasks.items(), strict=True):
        rows = [r for r in rows if r["bytes"] and r["acc"] is not None]
        # points are numbered and named in the legend: several rows share a size
        for number, r in enumerate(rows, start=1):
            ax.errorbar(r["bytes"], 100 * r["acc"], yerr=100 * (r["acc_spread"] or 0.0),
                        fmt="o", color=_colour(r["name"]), capsize=3)
            ax.annotate(str(number), (r["bytes"], 100 * r["acc"]), textcoords="offset points",
                        xytext=(4, 3), fontsize=7)
            ax.plot([], [], "o", color=_colour(r["name"]), label=f"{number} {r['name']}")
        front = pareto_front([(r["bytes"], r["acc"]) for r in rows])
        if front:
            ax.step([rows[i]["bytes"] for i in front], [100 * rows[i]["acc"] for i in front],
                    where="post", color="tab:blue", alpha=0.4, label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel("flatbuffer bytes (log scale)")
        ax.set_ylabel("accuracy on the TFLM runtime (%)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def bits_plot(tasks: Mapping[str, Mapping[str, tuple[int, int]]], path: Path) -> Path:
    """``tasks``: title -> {layer: (learned bits, max bits)}; writes a bar chart."""
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.5), squeeze=False)
    for ax, (title, layers) in zip(axes[0], tasks.items(), strict=True):
        names = list(layers)
        bits = [layers[n][0] for n in names]
        ax.bar(range(len(names)), bits,
               color=["tab:blue" if b <= 4 else "tab:orange" for b in bits])
        ax.plot(range(len(names)), [layers[n][1] for n in names], "k_", markersize=14,
                label="max bits")
        ax.axhline(4.5, color="0.5", linestyle="--", linewidth=0.8,
                   label="INT4 container (<= 4 bits) below")
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.set_ylim(0, 8.8)
        ax.set_ylabel("learned weight bits")
        ax.set_title(title, fontsize=10, pad=28)
        ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.06), ncol=2,
                  frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
