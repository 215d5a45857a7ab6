"""The dense starting ticket a fleet search prunes: the model at its initial weights W_0, with
every weight kept (density 1.0).

`ticket init` makes one from the encoding it fits on rows it loads; `fleet-server find
--fit-encoding` from the encoding the fleet's counts fit (server/encoding_fit.py). Both draw
W_0 with the seed derivation of `ticket find`, so a fleet search and a central one from the
same seed start from the same network.
"""

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import numpy as np

from ticket.bundle import Ticket, build_ticket
from ticket.errors import TicketError
from ticket.manifest import DataSpec, Density, Manifest, MethodSpec, ModelSpec, measure_density
from ticket.masks import prunable_names
from ticket.models import build_model
from ticket.prune import derive_seed
from ticket.train import snapshot

METHOD = "init"  # the manifest's method name of a dense starting ticket


def dense_ticket(
    model: str,
    data: DataSpec,
    *,
    seed: int,
    tool: Mapping[str, str],
    created_at: datetime,
    metrics: Mapping[str, Any] | None = None,
) -> Ticket:
    """The dense `model` for `data` (its input width and classes) at W_0 from `seed`."""
    if data.num_features is None or data.num_classes is None:
        raise TicketError(f"data {data.name!r} does not say its input width and classes")
    if seed < 0:
        raise TicketError(f"the seed of W_0 must be >= 0, got {seed}")
    model_args = {"in_features": data.num_features, "num_classes": data.num_classes}
    network = build_model(model, model_args, derive_seed(seed, "init"))
    weights = {name: value.numpy() for name, value in snapshot(network).items()}
    masks = {name: np.ones(weights[name].shape, np.bool_) for name in prunable_names(network)}
    manifest = Manifest(
        model=ModelSpec(name=model, args=model_args),
        data=data,
        method=MethodSpec(name=METHOD, seed=seed),
        rewind_step=0,
        density=Density.from_json(measure_density(masks), at="density"),
        metrics=dict(metrics or {}),
        parent=None,
        created_at=created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        tool=dict(tool),
    )
    return build_ticket(manifest, masks, weights)
