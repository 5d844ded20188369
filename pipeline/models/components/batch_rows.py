"""One process's rows of a global batch of rays, drawing what the whole batch would draw.

Under DDP every rank draws the same global batch (one generator, the same seed on every rank) and
renders only its rows. The random numbers a render draws per ray (stratified jitter, importance
samples, the occupancy march's jitter) are drawn for the whole batch too, and each rank keeps its
rows. So N ranks draw exactly what one process draws, and a DDP run follows the one-process run's
random stream: their difference is only the order of float sums (the averaged gradients).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch


@dataclass(frozen=True)
class BatchRows:
    """Rows ``[start, stop)`` of a global batch of ``total`` rays."""

    start: int
    stop: int
    total: int

    def __post_init__(self):
        if not 0 <= self.start <= self.stop <= self.total:
            raise ValueError(f"batch rows [{self.start}, {self.stop}) do not lie in a batch of {self.total}")

    @property
    def slice(self) -> slice:
        return slice(self.start, self.stop)

    def __len__(self) -> int:
        return self.stop - self.start

    def take(self, drawn: torch.Tensor) -> torch.Tensor:
        """These rows of ``drawn`` (total, ...), a tensor made for the whole batch."""
        return drawn[self.slice]

    def then(self, other: "BatchRows") -> "RowIndex":
        """These rows, then ``other``'s, in a batch of this batch followed by ``other``'s (a batch of
        pixels rendered in one pass with a second batch of rays after it)."""
        index = torch.cat([torch.arange(self.start, self.stop), self.total + torch.arange(other.start, other.stop)])
        return RowIndex(index, self.total + other.total)

    @staticmethod
    def of_rank(total: int, rank: int, world: int) -> "BatchRows":
        """Rank ``rank``'s share of ``total`` rays split as evenly as can be (sizes differ by <= 1)."""
        return BatchRows(total * rank // world, total * (rank + 1) // world, total)


@dataclass(frozen=True)
class RowIndex:
    """Rows ``index`` (n,) int64 of a global batch of ``total`` rays, in that order."""

    index: torch.Tensor
    total: int

    def __len__(self) -> int:
        return len(self.index)

    def take(self, drawn: torch.Tensor) -> torch.Tensor:
        return drawn[self.index.to(drawn.device)]


Rows = Union[BatchRows, RowIndex]


def _rows_of(draw, rows: Optional[Rows], n: int, width: int, generator, device, dtype) -> torch.Tensor:
    if rows is None:
        return draw((n, width), device=device, dtype=dtype, generator=generator)
    if len(rows) != n:
        raise ValueError(f"{n} rays given for {len(rows)} rows of a batch of {rows.total}")
    return rows.take(draw((rows.total, width), device=device, dtype=dtype, generator=generator))


def uniform_rows(rows: Optional[Rows], n: int, width: int, generator: Optional[torch.Generator],
                 device, dtype=torch.float32) -> torch.Tensor:
    """U(0, 1) numbers (n, width) for n rays: with ``rows``, this process's rows of the numbers
    drawn for the whole batch (``rows.total``, width); n must be the rows' count."""
    return _rows_of(torch.rand, rows, n, width, generator, device, dtype)


def normal_rows(rows: Optional[Rows], n: int, width: int, generator: Optional[torch.Generator],
                device, dtype=torch.float32) -> torch.Tensor:
    """N(0, 1) numbers (n, width), drawn as :func:`uniform_rows`."""
    return _rows_of(torch.randn, rows, n, width, generator, device, dtype)


__all__ = ["BatchRows", "RowIndex", "Rows", "uniform_rows", "normal_rows"]
