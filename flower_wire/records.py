"""The one conversion between ticket.wire's plain records and Flower's, for server and device.

Blobs travel as uint8 Arrays whose stype names their format, so an accidental `.numpy()` on
them fails instead of parsing codec bytes as .npy. A Flower record kind a wire message never
uses, or a non-bytes Array, still converts (as a Blob of its stype), so the wire decoder can
refuse it by name instead of this layer guessing.
"""

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from ticket.wire import Blob, ConfigValue, MetricValue, Records


def to_flower(records: Records) -> RecordDict:
    content = RecordDict()
    for name, arrays in records.arrays.items():
        content[name] = ArrayRecord({key: _array(blob) for key, blob in arrays.items()})
    for name, config in records.configs.items():
        content[name] = ConfigRecord(dict(config))
    for name, metrics in records.metrics.items():
        content[name] = MetricRecord(dict(metrics))
    return content


def from_flower(content: RecordDict) -> Records:
    arrays = {
        name: {key: Blob(array.stype, array.data) for key, array in record.items()}
        for name, record in content.array_records.items()
    }
    configs: dict[str, dict[str, ConfigValue]] = {
        name: dict(record) for name, record in content.config_records.items()
    }
    metrics: dict[str, dict[str, MetricValue]] = {
        name: dict(record) for name, record in content.metric_records.items()
    }
    return Records(arrays=arrays, configs=configs, metrics=metrics)


def reply(message: Message, records: Records) -> Message:
    """The reply to `message` carrying `records`."""
    return Message(to_flower(records), reply_to=message)


def _array(blob: Blob) -> Array:
    return Array(dtype="uint8", shape=(len(blob.data),), stype=blob.stype, data=blob.data)
