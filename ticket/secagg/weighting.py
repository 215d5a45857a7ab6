"""Example-weighted FedAvg under secure aggregation: what a node masks, and how the server
reads the weighted mean out of the sum.

The server must learn only the sum, so a node cannot send its example count n_u in the clear.
It masks k + 2 values instead of k:

    x_u = [ w_u * d_u  (k),  w_u * c,  w_u * c * min(L_u / LOSS_CAP, 1) ]

with d_u = local - global (the update, in the ticket's packed order), w_u = min(n_u, cap) / cap
in (0, 1], c the clip of the quantiser and L_u the node's training loss. The sum of the
survivors' vectors holds sum(w d), c * sum(w) and c * sum(w L) / LOSS_CAP, so

    mean = sum(w d) / sum(w)   (= plaintext FedAvg's example-weighted mean when every n_u <= cap)

and the example-weighted training loss come out, and nothing about a single node. Nodes with
more than `cap` examples weigh as `cap` (bounding any one device's pull on the model, as in
DP-FedAvg); pick cap near the largest expected local data set, since a small w_u costs
resolution: w_u * d_u is quantised on a grid of step delta = 2c / (q - 1).

Error. Each node's coordinate is off by less than delta (stochastic rounding, unbiased), so
the summed coordinates are off by e1, e2 with |e1|, |e2| < n delta, and

    |mean_hat - mean| = |c e1 - mean e2| / (c sum(w) + e2) <= n delta (1 + |mean| / c)
                                                              / (sum(w) - n delta / c)

which is at most mean_error_bound(); the typical error is ~sqrt(n) delta / (2 sum(w)).
Coordinates where |w_u d_u| > c are clipped on top of that (a bias, not covered by the bound).
"""

import numpy as np
import numpy.typing as npt

from ticket.secagg.errors import ParamsError, RoundAbortedError
from ticket.secagg.params import SecAggParams
from ticket.secagg.quantize import level_step

LOSS_CAP = 16.0  # training losses above this are reported as this (cross-entropy: ~ln(10^7))
EXTRA_VALUES = 2  # the weight and the loss ride after the k update values

Floats = npt.NDArray[np.float32]


def node_weight(examples: int, cap: int) -> float:
    """w_u = min(n_u, cap) / cap, in (0, 1]."""
    if cap < 1:
        raise ParamsError(f"the weight cap must be >= 1 example, got {cap}")
    if examples < 1:
        raise ParamsError(f"a node needs at least one example to take part, got {examples}")
    return min(examples, cap) / cap


def weighted_input(
    delta: npt.ArrayLike,
    *,
    examples: int,
    loss: float | None,
    params: SecAggParams,
    cap: int,
    flat: bool = False,
) -> Floats:
    """float32 [k + 2]: what a node masks (module docstring). `flat`: every node weighs 1
    and `loss` is None (differential privacy releases neither count nor loss, privacy.py)."""
    d = np.asarray(delta, dtype=np.float64)  # [k]
    if d.ndim != 1:
        raise ParamsError(f"expected a 1-D update, got shape {list(d.shape)}")
    w, c = (1.0 if flat else node_weight(examples, cap)), params.clip
    if loss is None:
        reported = 0.0
    else:
        reported = min(max(float(loss), 0.0), LOSS_CAP) if np.isfinite(loss) else LOSS_CAP
    extra = np.array([w * c, w * c * reported / LOSS_CAP])  # [2]
    return np.concatenate([w * d, extra]).astype(np.float32)  # [k + 2]


def read_sum(total: npt.ArrayLike, params: SecAggParams) -> tuple[Floats, float, float]:
    """(weighted mean update float32 [k], sum of weights, weighted mean loss) from the
    dequantised sum [k + 2] of the survivors' weighted inputs. RoundAbortedError when the
    weights sum to no more than their quantisation error (the mean would be noise)."""
    s = np.asarray(total, dtype=np.float64)  # [k + 2]
    if s.ndim != 1 or s.size < EXTRA_VALUES:
        raise ParamsError(f"expected a summed vector of k + {EXTRA_VALUES} values")
    c = params.clip
    weight = float(s[-2]) / c
    if weight <= level_step(params) / c:
        raise RoundAbortedError(f"the survivors' weights sum to {weight:.3g}: nothing to average")
    mean = (s[:-2] / weight).astype(np.float32)  # [k]
    loss = float(s[-1]) / c / weight * LOSS_CAP
    return mean, weight, loss


def mean_error_bound(params: SecAggParams, *, nodes: int, weight: float) -> float:
    """Worst-case |mean_hat - mean| per coordinate from quantisation (module docstring), for
    `nodes` vectors whose weights sum to `weight` (inputs within the clip)."""
    step = level_step(params)
    slack = weight - nodes * step / params.clip
    if slack <= 0:
        return float("inf")
    return 2 * nodes * step / slack
