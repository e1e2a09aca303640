"""``--indices``: dataset indices kept as ranges until the dataset's size is known.

``0:200000000`` must be refused for a 10,000-image test set *before* 200 million Python
ints (about 5 GB) exist, so the parsed value stores ranges, and :func:`robaudit.data.load_data`
checks its largest index against the dataset before expanding it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from robaudit.errors import UsageError

#: Most range items one --indices may hold (the text itself is user input).
MAX_ITEMS = 10_000


@dataclass(frozen=True, eq=False)
class Indices:
    """Dataset indices in the order given: half-open ranges ``(start, stop)``, each non-empty."""

    ranges: tuple[tuple[int, int], ...]

    def __len__(self) -> int:
        return sum(stop - start for start, stop in self.ranges)

    def __iter__(self) -> Iterator[int]:
        for start, stop in self.ranges:
            yield from range(start, stop)

    def __bool__(self) -> bool:
        return bool(self.ranges)

    @property
    def largest(self) -> int:
        return max(stop - 1 for _, stop in self.ranges)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Indices):
            return self.ranges == other.ranges
        if isinstance(other, (list, tuple)):  # a Sequence[int]: equal to the list it expands to
            return len(self) == len(other) and list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # compares equal to lists, which are unhashable

    def __str__(self) -> str:
        return ",".join(str(a) if b == a + 1 else f"{a}:{b}" for a, b in self.ranges)


def parse_indices(text: Any, flag: str = "--indices") -> Indices | None:
    """'0,5,10:20' (or a list of ints/strings from a config) → Indices; None passes through.

    Raises:
        UsageError: not integers/ranges, a negative index, an empty range, or nothing at all.
    """
    if text is None:
        return None
    if isinstance(text, Indices):
        return text
    from robaudit.text import clip

    items = list(text) if isinstance(text, (list, tuple)) else str(text).replace(" ", "").split(",")
    if len(items) > MAX_ITEMS:
        raise UsageError(f"{flag}: more than {MAX_ITEMS:,} items; use ranges such as 0:1000")
    ranges: list[tuple[int, int]] = []
    for item in items:
        if isinstance(item, bool):
            raise UsageError(f"{flag}: expected indices like 0,5,10:20, got {clip(text)}")
        item = str(item)
        if not item:
            continue
        try:
            if ":" in item:
                a, _, b = item.partition(":")
                start, stop = int(a or 0), int(b)
            else:
                start = int(item)
                stop = start + 1
        except ValueError:
            raise UsageError(f"{flag}: expected indices like 0,5,10:20, got {clip(text)}") from None
        if start < 0 or stop < 0:
            raise UsageError(f"{flag}: indices must be >= 0, got {clip(item)}")
        if stop <= start:
            raise UsageError(f"{flag}: empty range {clip(item)} (expected START:STOP with STOP > START)")
        ranges.append((start, stop))
    if not ranges:
        raise UsageError(f"{flag}: no indices in {clip(text)}")
    return Indices(tuple(ranges))


__all__ = ["Indices", "parse_indices"]
