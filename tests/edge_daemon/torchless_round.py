"""A device's whole round, driven in-process in a fresh interpreter (test_imports.py runs it):
plain train, evaluate and a secure round of three devices on their readings.

    python -m tests.edge_daemon.torchless_round TICKET DB1 DB2 DB3

Prints one JSON object: whether torch was ever imported, and the secure round's mean update
beside the plain replies' weighted mean of the same training (the secure sum's oracle).
"""

import json
import sys
from pathlib import Path
from uuid import uuid4

import numpy as np
from flwr.app import Message, MessageType

from edge_daemon import client_app
from flower_wire import from_flower, to_flower
from tests.inprocess import InProcessGrid, server_identity
from ticket import wire
from ticket.bundle import Ticket, read_ticket
from ticket.codec import Kind, decode_vector, encode_vector
from ticket.packing import PackLayout
from ticket.secagg import SecAggParams, ServerRound
from ticket.secagg.weighting import EXTRA_VALUES, node_weight, read_sum
from ticket.wire import (
    EvaluateInstruction,
    EvaluateReply,
    Schedule,
    SecAggReply,
    SecAggRequest,
    TrainInstruction,
    TrainReply,
)

PARAMS = SecAggParams(clip=0.25)
CAP = 100
ROUND = 1


def train_instruction(ticket: Ticket, values: np.ndarray) -> TrainInstruction:
    payload = encode_vector(values, kind=Kind.MODEL, ticket_id=ticket.content_id, round=ROUND)
    schedule = Schedule(epochs=2, batch_size=8, lr=1e-3, optimizer="adam")
    return TrainInstruction(ticket.content_id, ROUND, payload, "float32", schedule, seed=3)


def send(grid: InProcessGrid, node: int, records: wire.Records, kind: str) -> wire.Records:
    message = Message(to_flower(records), dst_node_id=node, message_type=kind)
    message.metadata.__dict__["_message_id"] = uuid4().hex  # the SuperLink's job
    [reply] = grid.send_and_receive([message], timeout=10)
    if reply.has_error():
        raise RuntimeError(f"node {node}: {reply.error.reason}")
    return from_flower(reply.content)


def secure_round(grid: InProcessGrid, train: TrainInstruction, size: int) -> np.ndarray:
    """The survivors' weighted mean update [size], as the server reads it from the sum."""
    server = ServerRound(run_id=1, round=ROUND, params=PARAMS, length=size + EXTRA_VALUES)
    for node in grid.contexts:  # setup: adverts, then key bundles -> share bundles
        advert = SecAggRequest(round=ROUND, weight_cap=CAP, advert_round=ROUND)
        reply = SecAggReply.from_record(send(grid, node, advert.to_record(), MessageType.QUERY))
        server.add_advert(node, reply.key_advert or b"")
    for node, bundle in server.key_bundles().items():
        keys = SecAggRequest(round=ROUND, weight_cap=CAP, key_bundle=bundle, bundle_round=ROUND)
        reply = SecAggReply.from_record(send(grid, node, keys.to_record(), MessageType.QUERY))
        server.add_share_bundle(node, reply.share_bundle or b"")
    for node, request in server.mask_requests().items():  # trip A: train and mask
        masked = SecAggRequest(round=ROUND, weight_cap=CAP, mask_request=request)
        records = masked.to_record().merged(train.to_record())
        reply = SecAggReply.from_record(send(grid, node, records, MessageType.TRAIN))
        server.add_masked_input(node, reply.masked_input or b"")
    for node, request in server.unmask_requests().items():  # trip B: reveal shares
        unmask = SecAggRequest(round=ROUND, weight_cap=CAP, unmask_request=request)
        reply = SecAggReply.from_record(send(grid, node, unmask.to_record(), MessageType.QUERY))
        server.add_unmask_response(node, reply.unmask_response or b"")
    mean, _, _ = read_sum(server.result().sum(), PARAMS)
    return mean


def main(ticket_path: Path, databases: list[Path]) -> dict[str, object]:
    ticket = read_ticket(ticket_path, allow_unsigned=True)
    layout = PackLayout.from_ticket(ticket)
    start = layout.pack(ticket.weights)  # float32 [k]
    train = train_instruction(ticket, start)
    configs: list[dict[str, bool | float | int | str]] = [
        {
            wire.NODE_TICKET_PATH: str(ticket_path),
            wire.NODE_ALLOW_UNSIGNED: True,
            wire.NODE_SECAGG_ALLOW_UNCERTIFIED: True,
            wire.NODE_READINGS_DB: str(database),
        }
        for database in databases
    ]
    with server_identity():
        grid = InProcessGrid(client_app.app, configs)
        deltas, weights, scores = [], [], []
        for node in grid.contexts:
            reply = TrainReply.from_record(send(grid, node, train.to_record(), MessageType.TRAIN))
            values = decode_vector(
                reply.payload,
                kind=Kind.UPDATE,
                ticket_id=ticket.content_id,
                round=ROUND,
                length=layout.size,
                segment_sizes=layout.segment_sizes,
            )
            deltas.append(values - start)
            weights.append(node_weight(reply.examples, CAP))
            evaluate = EvaluateInstruction(ticket.content_id, ROUND, train.payload)
            records = send(grid, node, evaluate.to_record(), MessageType.EVALUATE)
            scores.append(EvaluateReply.from_record(records).accuracy)
        secure = secure_round(grid, train, layout.size)
    # The plain replies' weighted mean, clipped as a secure input is: the secure sum's oracle.
    clipped = np.clip(np.stack(deltas), -PARAMS.clip, PARAMS.clip)  # [nodes, k]
    expected = (np.asarray(weights)[:, None] * clipped).sum(axis=0) / sum(weights)
    return {
        "torch": "torch" in sys.modules,
        "largest_update": float(np.abs(expected).max()),
        "secure_error": float(np.abs(secure - expected).max()),
        "accuracies": scores,
    }


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), [Path(arg) for arg in sys.argv[2:]])))
