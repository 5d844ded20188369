"""One process's rows of a global batch of rays, drawing what the whole batch would draw.

Under DDP every rank draws the same global batch (one generator, the same seed on every rank) and
renders only its rows. The random numbers a render draws per ray (stratified jitter, importance
samples, the occupancy march's jitter) are drawn for the whole batch too, and each rank keeps its
rows. So N ranks draw exactly what one process draws, and a DDP run follows the one-process run's
random stream: their difference is only the order of float sums (the averaged gradients).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

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

    @staticmethod
    def of_rank(total: int, rank: int, world: int) -> "BatchRows":
        """Rank ``rank``'s share of ``total`` rays split as evenly as can be (sizes differ by <= 1)."""
        return BatchRows(total * rank // world, total * (rank + 1) // world, total)


def uniform_rows(rows: Optional[BatchRows], n: int, width: int, generator: Optional[torch.Generator],
                 device, dtype=torch.float32) -> torch.Tensor:
    """U(0, 1) numbers (n, width) for n rays: with ``rows``, this process's rows of the numbers
    drawn for the whole batch (``rows.total``, width); n must be the rows' count."""
    if rows is None:
        return torch.rand((n, width), device=device, dtype=dtype, generator=generator)
    if rows.stop - rows.start != n:
        raise ValueError(f"{n} rays given for batch rows [{rows.start}, {rows.stop})")
    return torch.rand((rows.total, width), device=device, dtype=dtype, generator=generator)[rows.slice]


__all__ = ["BatchRows", "uniform_rows"]
