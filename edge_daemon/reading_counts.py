"""What a device sends for a federated fit of the encoding of readings: counts, never readings.

Before there is a ticket (its input width depends on the encoding), the server asks the fleet
once for the histogram of its training readings (ticket/data/heart_counts.py's 1,741 counts)
and sums them under secure aggregation (server/encoding_fit.py). A device counts the readings
training would use: the labelled readings of its store after retention, less the ones held out
for local evaluation, or the training rows of its partition for a dataset node. The counts are
masked as they are, each at most the server's public cap: a device holding more rows than the
cap refuses the round instead of sending counts that would wrap around.
"""

from collections.abc import Sequence

from edge_daemon.local_data import (
    LocalDataError,
    LocalDataSpec,
    StoreSpec,
    held_out_rows,
    partition_rows,
    store_rows,
)
from ticket.data.heart_counts import Counts, encoding_counts
from ticket.data.heart_encoding import RawRow, ReadingError

SCHEMAS = ("heart-uci",)  # readings schemas whose encoding the fleet can fit


def local_counts(data: LocalDataSpec | StoreSpec, schema: str) -> Counts:
    """int64 [COUNTS_LENGTH]: this node's counts of its training readings of `schema`;
    LocalDataError for another schema, no readings, or a reading outside the schema (its
    message names the row and column, never a value)."""
    if schema not in SCHEMAS:
        raise LocalDataError(f"no encoding fit for readings schema {schema!r}")
    source = data.schema if isinstance(data, StoreSpec) else data.dataset
    if source != schema:
        raise LocalDataError(f"counts of {schema!r} asked, this node holds {source!r}")
    rows: Sequence[RawRow]
    if isinstance(data, StoreSpec):
        readings = store_rows(data)
        held_out = held_out_rows(len(readings), data)
        rows = [row for row, out in zip(readings, held_out, strict=True) if not out]
    else:
        rows = partition_rows(data)
    try:
        return encoding_counts(rows)
    except ReadingError as error:
        raise LocalDataError(f"readings cannot be counted: {error}") from None
