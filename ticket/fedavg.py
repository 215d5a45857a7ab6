"""Federated averaging of packed vectors: the example-weighted mean, and nothing else.

Which replies count is the caller's decision (a rejected reply never reaches this module).
"""

from collections.abc import Sequence

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
