"""flower_wire: ticket.wire records <-> Flower RecordDict, and back, losing nothing."""

import re

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from flower_wire import from_flower, reply, to_flower
from tests.inprocess import server_identity
from ticket import wire
from ticket.secagg.privacy import SkellamParams
from ticket.wire import Records, SecAggRequest, TrainInstruction, TrainReply, WireError

SCHEDULE = wire.Schedule(epochs=1, batch_size=32, lr=1e-3, optimizer="adam")


def test_records_round_trip_through_flower() -> None:
    ask = TrainInstruction("a" * 64, 2, b"codec bytes", "int8", SCHEDULE, seed=3).to_record()
    dp = SkellamParams(0.5, 100.0, 4.0)
    both = SecAggRequest(2, 100, mask_request=b"m", dp=dp).to_record().merged(ask)

    content = to_flower(both)

    assert sorted(content.array_records) == [wire.ARRAYS]
    assert sorted(content.config_records) == [wire.CONFIG, wire.SECAGG]
    assert from_flower(content) == both


def test_a_blob_is_a_uint8_array_with_its_stype() -> None:
    content = to_flower(TrainReply(b"\x01\x02\x03", examples=5, train_loss=0.5).to_record())

    array = content.array_records[wire.ARRAYS][wire.PACKED]

    assert (array.stype, array.dtype, tuple(array.shape)) == (wire.CODEC_STYPE, "uint8", (3,))
    assert array.data == b"\x01\x02\x03"
    with pytest.raises(Exception):  # noqa: B017  # not .npy bytes: numpy() must fail
        array.numpy()


def test_a_dense_numpy_array_is_refused_by_the_decoder_by_name() -> None:
    content = RecordDict(
        {
            wire.ARRAYS: ArrayRecord({wire.PACKED: Array(np.zeros(3, np.float32))}),
            wire.CONFIG: ConfigRecord({wire.TICKET_ID: "x"}),
        }
    )

    records = from_flower(content)

    with pytest.raises(
        WireError, match=re.escape("arrays.packed: expected stype 'ticketfleet.codec'")
    ):
        TrainInstruction.from_record(records)


def test_a_config_list_value_survives_conversion_and_is_refused() -> None:
    content = RecordDict({wire.SECAGG: ConfigRecord({wire.ROUND: [1, 2], wire.WEIGHT_CAP: 1})})

    with pytest.raises(WireError, match=re.escape("secagg.round: expected int")):
        SecAggRequest.from_record(from_flower(content))


def test_reply_answers_the_message() -> None:
    with server_identity():
        message = Message(RecordDict(), dst_node_id=101, message_type="train")
    message.metadata.__dict__["_message_id"] = "m1"

    answer = reply(message, Records(metrics={wire.METRICS: {wire.NUM_EXAMPLES: 1}}))

    assert answer.metadata.reply_to_message_id == "m1"
    assert from_flower(answer.content).metrics == {wire.METRICS: {wire.NUM_EXAMPLES: 1}}
