"""Euclidean projection onto the probability simplex (the feasible set of relaxed tokens)."""

from __future__ import annotations

import torch


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Rows of ``v`` -> the closest points (in L2) with non-negative entries summing to one.

    The sort-based solution of the projection's KKT conditions: find the largest
    ``rho`` with ``u_rho > (sum_{j<=rho} u_j - 1) / rho`` on the sorted row ``u``,
    then shift by that threshold and clip at zero.
    """
    if v.dim() == 1:
        return project_simplex(v[None])[0]
    n = v.shape[-1]
    u, _ = torch.sort(v, dim=-1, descending=True)
    css = u.cumsum(-1) - 1
    ranks = torch.arange(1, n + 1, device=v.device, dtype=v.dtype)
    cond = u - css / ranks > 0
    rho = (cond * ranks).argmax(-1, keepdim=True)  # cond holds on a prefix: its last index
    theta = css.gather(-1, rho) / (rho + 1).to(v.dtype)
    return (v - theta).clamp_min(0)
