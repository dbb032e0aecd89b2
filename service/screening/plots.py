"""PNG plots of the what-if and feasibility commands, drawn with matplotlib when it is installed.

matplotlib is an optional extra (``pip install 'prescreen[plot]'``): a plot is a convenience
beside the JSON, CSV and HTML files, which hold every number, and the library with its fonts
and image codecs would triple the size of the service's image. Without it the commands write
everything else and say that the plot was left out.

No plot shows a suppressed count: a month whose count is hidden (``<5``) is marked as such,
with no bar, so that no height gives it away.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

INSTALL_HINT = "install the plot extra (pip install 'prescreen[plot]') for a PNG plot"
CANDIDATE_COLOUR, POTENTIAL_COLOUR, HIDDEN_COLOUR = "#174a2c", "#1f5f8b", "#6b6b6b"


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _save(path: Path, draw: Callable[[Any], None], size: tuple[float, float]) -> None:
    """Draw on a new figure and write it under ``path`` in one step (a temporary name, then
    renamed, as every output file)."""
    # A Figure of its own, without pyplot: no global state, and a quicker import.
    from matplotlib.figure import Figure

    figure = Figure(figsize=size)
    axes = figure.add_subplot()
    draw(axes)
    figure.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    figure.savefig(tmp, dpi=110, bbox_inches="tight", metadata={"Software": None})
    tmp.replace(path)


def whatif_plot(
    path: Path,
    title: str,
    x_name: str,
    x_labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[int], Sequence[int]]],
    own_index: int | None,
) -> None:
    """Counts per value of the first varied parameter: for each combination of the others
    (``series``: label, candidates, potential candidates), candidates as a solid line and
    candidates plus potential candidates as a dashed one."""

    def draw(axes: Any) -> None:
        positions = list(range(len(x_labels)))
        for index, (label, candidates, potential) in enumerate(series):
            suffix = f" ({label})" if label else ""
            colour = f"C{index}" if len(series) > 1 else CANDIDATE_COLOUR
            flagged = [c + p for c, p in zip(candidates, potential, strict=True)]
            axes.plot(positions, candidates, "o-", color=colour, label=f"candidates{suffix}")
            axes.plot(
                positions,
                flagged,
                "s--",
                color=colour if len(series) > 1 else POTENTIAL_COLOUR,
                label=f"candidates + potential candidates{suffix}",
            )
        if own_index is not None:
            axes.axvline(own_index, color=HIDDEN_COLOUR, linestyle=":", linewidth=1)
            axes.annotate(
                "protocol",
                (own_index, 0),
                xytext=(3, 3),
                textcoords="offset points",
                color=HIDDEN_COLOUR,
                fontsize=8,
            )
        axes.set_xticks(positions, list(x_labels))
        axes.set_xlabel(x_name)
        axes.set_ylabel("patients")
        axes.set_ylim(bottom=0)
        axes.set_title(title)
        # Beside the plot, not on its lines.
        axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))

    _save(path, draw, (7.5 if len(series) == 1 else 10.0, 4.5))


def monthly_plot(
    path: Path,
    title: str,
    months: Sequence[str],
    series: Sequence[tuple[str, Sequence[tuple[int | None, str]]]],
) -> None:
    """New candidates per month, one group of bars per month and a bar per trial (``series``:
    label, (count or None when hidden, how it is shown) per month); a hidden count has no
    bar, only its mark at the axis."""

    def draw(axes: Any) -> None:
        from matplotlib.patches import Patch
        from matplotlib.ticker import MaxNLocator

        width = 0.8 / max(len(series), 1)
        handles = []
        for index, (label, cells) in enumerate(series):
            colour = f"C{index}"
            offset = (index - (len(series) - 1) / 2) * width
            for month, (count, shown) in enumerate(cells):
                x = month + offset
                if count is None:
                    axes.annotate(
                        shown,
                        (x, 0),
                        ha="center",
                        va="bottom",
                        rotation=90,
                        fontsize=7,
                        color=HIDDEN_COLOUR,
                        xytext=(0, 2),
                        textcoords="offset points",
                    )
                    continue
                axes.bar([x], [count], width, color=colour)
                axes.annotate(
                    str(count),
                    (x, count),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    xytext=(0, 1),
                    textcoords="offset points",
                )
            handles.append(Patch(color=colour, label=label))
        axes.set_xticks(
            list(range(len(months))), list(months), rotation=45, ha="right", rotation_mode="anchor"
        )
        axes.set_xlim(-0.6, len(months) - 0.4)
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel("new candidates")
        axes.set_ylim(bottom=0, top=max(axes.get_ylim()[1], 5))
        axes.set_title(title)
        axes.legend(handles=handles, fontsize=8)

    _save(path, draw, (8.0, 4.2))
