"""Data sets of the paper's experiments. Toy sets are generated; nothing is downloaded.

* ``cubic_batch``: 1-D regression x -> -x**3 on [-1, 1] (Figure 1).
* ``rings_batch``: 4 nested rings in 2-D with alternating labels 0, 1, 0, 1 (Figure 5).
"""
from __future__ import annotations

import torch

RING_RADII = (0.5, 1.0, 1.5, 2.0)


def cubic_batch(n: int, generator: torch.Generator | None = None, dtype=torch.float32):
    """``n`` points uniform on [-1, 1] and their targets -x**3, shaped (n, 1)."""
    x = torch.rand(n, 1, generator=generator, dtype=dtype) * 2 - 1
    return x, -x ** 3


def rings_batch(points_per_ring: int, generator: torch.Generator | None = None,
                radii=RING_RADII, scale: float = 3.0, jitter: float = 0.2, dtype=torch.float32):
    """Points on nested rings of radius scale*(r + jitter*U[0,1]); label i % 2 for ring i.

    Returns (points (N, 2), labels (N,) int64), rings in order of increasing radius.
    """
    if points_per_ring < 1:
        raise ValueError(f"points_per_ring must be positive, got {points_per_ring}")
    xs, ys = [], []
    for i, r in enumerate(radii):
        angle = torch.rand(points_per_ring, generator=generator, dtype=dtype) * (2 * torch.pi)
        radius = scale * (r + jitter * torch.rand(points_per_ring, generator=generator, dtype=dtype))
        xs.append(torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1))
        ys.append(torch.full((points_per_ring,), i % 2, dtype=torch.int64))
    return torch.cat(xs), torch.cat(ys)
