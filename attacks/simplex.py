"""Euclidean projection onto the probability simplex (the feasible set of relaxed tokens)."""

from __future__ import annotations

import torch

#: Michelot iterations tried before the sort-based solution takes over.
FIXED_POINT_ITERATIONS = 32


def _sorted_threshold(v: torch.Tensor) -> torch.Tensor:
    """The threshold from the sorted row: the largest ``rho`` with ``u_rho > (sum_{j<=rho} u_j - 1) / rho``."""
    n = v.shape[-1]
    u, _ = torch.sort(v, dim=-1, descending=True)
    css = u.cumsum(-1) - 1
    ranks = torch.arange(1, n + 1, device=v.device, dtype=v.dtype)
    cond = u - css / ranks > 0
    rho = (cond * ranks).argmax(-1, keepdim=True)  # cond holds on a prefix: its last index
    return css.gather(-1, rho) / (rho + 1).to(v.dtype)


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Rows of ``v`` -> the closest points (in L2) with non-negative entries summing to one.

    The projection is ``max(v - theta, 0)`` for the threshold ``theta`` that makes
    each row sum to one. Michelot's fixed point finds it exactly without sorting:
    start from the mean shift over the whole row, keep the entries above the
    threshold, recompute the shift over those, repeat until the kept set stops
    changing. Near the simplex (where UnlearnDiff's Adam steps leave its
    distributions) it converges in a few passes, faster than sorting 30k-entry
    rows after every step; rows it has not settled within
    :data:`FIXED_POINT_ITERATIONS` passes get the sort-based solution.
    """
    if v.dim() == 1:
        return project_simplex(v[None])[0]
    n = v.shape[-1]
    keep = torch.ones_like(v, dtype=torch.bool)
    theta = (v.sum(-1, keepdim=True) - 1) / n
    for _ in range(FIXED_POINT_ITERATIONS):
        new_keep = v > theta
        if torch.equal(new_keep, keep):
            return (v - theta).clamp_min(0)
        keep = new_keep
        theta = ((v * keep).sum(-1, keepdim=True) - 1) / keep.sum(-1, keepdim=True).clamp_min(1)
    return (v - _sorted_threshold(v)).clamp_min(0)
