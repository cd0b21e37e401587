"""The one markdown table renderer: `report`'s paper layouts, `bench` and `demo` print through it."""

from __future__ import annotations

from typing import Iterable, Sequence


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A markdown table: the header row, the separator, one line per row of cells (already formatted).

    No trailing newline. Every row must have as many cells as the header.
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cells in rows:
        if len(cells) != len(header):
            raise ValueError(f"a table row has {len(cells)} cells for {len(header)} columns: {list(cells)}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
