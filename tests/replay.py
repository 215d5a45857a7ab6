"""Replay a finished secure-aggregation run from its log alone, outside every Flower process.

A round's global model is a pure function of the one before it and of who survived it: each
survivor trains from the global on its own readings with the seed (run seed, round, node id),
masks nothing here (the pairwise and self masks cancel exactly in the server's sum), and
quantises with the same seeded stochastic rounding, so the sum of its levels is the sum the
server unmasked. Replaying every round of rounds.jsonl with its recorded survivors from the
ticket's W_k must therefore give the run's final model bit for bit, however many processes
were killed and restarted on the way: a round trained twice with different updates, an update
of a device that did not survive, or a resume from the wrong checkpoint would all change it.

The replay shares with the product only its pure core (training, weighting, quantisation,
the round's read-out) and the device's data loader, never the message handling it checks.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_daemon.client_app import local_seed
from edge_daemon.local_data import StoreSpec, load_store_data
from ticket import numpy_mlp
from ticket.bundle import Ticket
from ticket.packing import PackLayout
from ticket.runconfig import TrainingSettings
from ticket.secagg.params import SecAggParams
from ticket.secagg.quantize import dequantize_sum, quantize
from ticket.secagg.weighting import read_sum, weighted_input
from ticket.train_config import TrainConfig


@dataclass(frozen=True)
class ReplayedRound:
    server_round: int
    survivors: tuple[int, ...]
    vector: npt.NDArray[np.float32]  # the global packed vector after this round


def replay_secure_run(
    ticket: Ticket,
    rounds: Iterable[Mapping[str, Any]],
    readings: Mapping[int, Path],
    settings: TrainingSettings,
) -> list[ReplayedRound]:
    """Every round of `rounds` (rounds.jsonl's lines, in order) replayed from W_k.

    `readings`: node id -> that device's readings store (edge-daemon's readings.sqlite3).
    A round that aborted (no survivors' sum) leaves the global model as it was.
    """
    if settings.dp_noise_multiplier or settings.downlink_dtype != "float32":
        raise ValueError("a replay needs a run without DP noise and with a float32 downlink")
    layout = PackLayout.from_ticket(ticket)
    schedule = TrainConfig(
        epochs=settings.local_epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        optimizer=settings.optimizer,
    )
    preprocessing = ticket.manifest.data.preprocessing
    data = {
        node: load_store_data(StoreSpec(path), preprocessing) for node, path in readings.items()
    }
    vector = layout.pack(ticket.weights)
    replayed = []
    for line in rounds:
        r = int(line["round"])
        secagg = line["secagg"]
        survivors = tuple(sorted(int(node) for node in secagg.get("survivors") or ()))
        if secagg.get("aborted") is None:
            # The round's own levels, as logged: fixed, or chosen for its cohort
            # (secagg-target-error).
            params = SecAggParams(clip=settings.secagg_clip, levels=int(secagg["levels"]))
            start = {name: np.array(w) for name, w in ticket.weights.items()}
            start |= layout.unpack(vector)
            total = np.zeros(vector.size + 2, dtype=np.int64)
            for node in survivors:
                rows = data[node]
                seed = local_seed(settings.seed, r, node)
                trained, loss = numpy_mlp.train_masked(
                    start, ticket.masks, rows.x_train, rows.y_train, schedule, seed=seed
                )
                delta = layout.pack(trained) - vector
                examples = int(rows.y_train.shape[0])
                masked_input = weighted_input(
                    delta,
                    examples=examples,
                    loss=loss,
                    params=params,
                    cap=settings.secagg_weight_cap,
                )
                total += quantize(masked_input, params, np.random.default_rng(seed))
            mean, _, _ = read_sum(dequantize_sum(total, len(survivors), params), params)
            vector = vector + mean
        replayed.append(ReplayedRound(r, survivors, vector))
    return replayed
