"""Federated averaging: the example-weighted mean of packed vectors and of reported metrics.

Which replies count is the caller's decision (a rejected reply never reaches this module).
"""

from collections.abc import Collection, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from ticket.errors import TicketError


def weighted_mean(
    vectors: Sequence[npt.NDArray[np.float32]], examples: Sequence[int]
) -> npt.NDArray[np.float32]:
    """sum_i examples[i] * vectors[i] / sum_i examples[i], as float32 of the common length.

    Accumulates in float64 so the result does not depend on the order of the replies
    (which depends on node sampling) beyond float32 rounding of the final value.
    """
    if not vectors:
        raise TicketError("nothing to average: no vectors")
    if len(vectors) != len(examples):
        raise TicketError(f"{len(vectors)} vectors but {len(examples)} example counts")
    length = vectors[0].shape
    for index, vector in enumerate(vectors):
        if vector.ndim != 1 or vector.shape != length:
            raise TicketError(
                f"vector {index} has shape {list(vector.shape)}, expected {list(length)}"
            )
    for index, count in enumerate(examples):
        # bool is an int: True examples is a bug, not one example.
        if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 1:
            raise TicketError(f"example count {index} must be an integer >= 1, got {count!r}")
    total = float(sum(int(count) for count in examples))
    mean = np.zeros(length, dtype=np.float64)  # [n]
    for vector, count in zip(vectors, examples, strict=True):
        mean += vector.astype(np.float64) * (int(count) / total)
    return mean.astype(np.float32)


def weighted_metrics(
    reports: Sequence[Mapping[str, float]],
    examples: Sequence[int],
    *,
    optional: Collection[str] = (),
) -> dict[str, float]:
    """Example-weighted mean of each metric, keyed like the reports, sorted by name.

    A metric is averaged when every report has it, or, if it is in `optional`, over the reports
    that have it (weighted by their examples only): e.g. ROC-AUC, which a node whose test rows
    hold one class cannot compute. Other metrics that some report lacks are left out.
    """
    if len(reports) != len(examples):
        raise TicketError(f"{len(reports)} reports but {len(examples)} example counts")
    keys = {key for report in reports for key in report}
    means = {}
    for key in sorted(keys):
        having = [(r[key], n) for r, n in zip(reports, examples, strict=True) if key in r]
        if len(having) < len(reports) and key not in optional:
            continue
        total = sum(n for _, n in having)
        means[key] = sum(value * n for value, n in having) / total
    return means
