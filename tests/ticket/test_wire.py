"""ticket/wire.py: round trips, strict decoding that names the field, pinned keys, one home."""

import ast
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from ticket import wire
from ticket.errors import TicketError
from ticket.secagg.privacy import SkellamParams
from ticket.wire import (
    Blob,
    EvaluateInstruction,
    EvaluateReply,
    InstallAck,
    InstallPush,
    ModelAck,
    ModelPush,
    Probe,
    Records,
    Schedule,
    SearchStep,
    SecAggReply,
    SecAggRequest,
    TrainInstruction,
    TrainReply,
    WireError,
)

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("ticket", "edge_daemon", "server", "ticket_cli", "loopback", "flower_wire")
SCHEDULE = Schedule(epochs=2, batch_size=32, lr=1e-3, optimizer="adam")

EXAMPLES: dict[str, Any] = {
    "TrainInstruction": TrainInstruction("a" * 64, 3, b"model", "int8", SCHEDULE, seed=7),
    "TrainInstruction+search": TrainInstruction(
        "a" * 64, 3, b"model", "float32", SCHEDULE, seed=7, search=SearchStep(b"bits")
    ),
    "TrainInstruction+saliency": TrainInstruction(
        "a" * 64,
        1,
        b"model",
        "float32",
        SCHEDULE,
        seed=7,
        search=SearchStep(b"bits", wire.SALIENCY, 0.25),
    ),
    "TrainReply": TrainReply(b"update", examples=226, train_loss=0.5),
    "EvaluateInstruction": EvaluateInstruction("a" * 64, 3, b"model"),
    "EvaluateInstruction+probe": EvaluateInstruction("a" * 64, 0, b"w", Probe(SCHEDULE, seed=1)),
    "EvaluateReply": EvaluateReply(examples=78, loss=0.4, accuracy=0.8),
    "EvaluateReply+auc": EvaluateReply(examples=78, loss=0.4, accuracy=0.8, auc=0.9),
    "InstallPush": InstallPush("a" * 64, b"ticket bytes"),
    "InstallAck": InstallAck(wire.INSTALLED, "a" * 64),
    "InstallAck+rejected": InstallAck(wire.REJECTED, "", "not trusted"),
    "ModelPush": ModelPush("a" * 64, 5, b"model"),
    "ModelAck": ModelAck(wire.KEPT),
    "ModelAck+rejected": ModelAck(wire.REJECTED, "ticket not cached"),
    "SecAggRequest": SecAggRequest(
        1, 100, mask_request=b"m", advert_round=2, dp=SkellamParams(0.5, 100.0, 4.0)
    ),
    "SecAggRequest+unmask": SecAggRequest(
        1, 100, unmask_request=b"u", key_bundle=b"k", bundle_round=2
    ),
    "SecAggRequest+advert": SecAggRequest(1, 100, advert_round=1),
    "SecAggRequest+counts": SecAggRequest(
        1, 100, mask_request=b"m", counts_schema="heart-uci", count_cap=5000
    ),
    "SecAggReply": SecAggReply(masked_input=b"x", key_advert=b"a"),
    "SecAggReply+unmask": SecAggReply(unmask_response=b"r", share_bundle=b"s"),
}


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_message_round_trips(name: str) -> None:
    message = EXAMPLES[name]

    assert type(message).from_record(message.to_record()) == message


def test_a_secure_train_message_carries_both_parts() -> None:
    train = TrainInstruction("a" * 64, 1, b"model", "float32", SCHEDULE, seed=0)
    ask = SecAggRequest(1, 100, mask_request=b"m")
    both = ask.to_record().merged(train.to_record())

    assert TrainInstruction.from_record(both) == train
    assert SecAggRequest.from_record(both) == ask
    with pytest.raises(WireError, match=re.escape("secagg")):
        EvaluateInstruction.from_record(both)
    with pytest.raises(WireError, match=re.escape("sent twice")):
        both.merged(train.to_record())


def _edit_config(records: Records, name: str, **changes: Any) -> Records:
    config = {**records.configs[name]}
    for name_, value in changes.items():
        key = name_.replace("_", "-")
        if value is _DROP:
            del config[key]
        else:
            config[key] = value
    return dataclasses.replace(records, configs={**records.configs, name: config})


_DROP = object()


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"local_epochs": _DROP}, "train instruction: config.local-epochs: missing"),
        ({"local_epochs": "x"}, "train instruction: config.local-epochs: expected int, got 'x'"),
        ({"local_epochs": True}, "config.local-epochs: expected int, got True"),
        ({"lr": "fast"}, "config.lr: expected float, got 'fast'"),
        ({"lr": False}, "config.lr: expected float, got False"),
        ({"ticket_id": 5}, "config.ticket-id: expected str, got 5"),
        ({"proximal_mu": 0.1}, "config.proximal-mu: unexpected key"),
    ],
)
def test_a_bad_train_config_names_the_field(changes: dict[str, Any], error: str) -> None:
    records = _edit_config(EXAMPLES["TrainInstruction"].to_record(), wire.CONFIG, **changes)

    with pytest.raises(WireError, match=re.escape(error)):
        TrainInstruction.from_record(records)


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"objective": "dream"}, "config.objective: expected one of update, saliency"),
        ({"objective": _DROP}, "config.objective: missing"),
        ({"saliency_scale": 0.0}, "config.saliency-scale: expected a positive float"),
        ({"saliency_scale": -1.0}, "config.saliency-scale: -1.0 is outside"),
        ({"saliency_scale": float("nan")}, "config.saliency-scale: expected a finite float"),
    ],
)
def test_a_bad_search_step_names_the_field(changes: dict[str, Any], error: str) -> None:
    records = _edit_config(
        EXAMPLES["TrainInstruction+saliency"].to_record(), wire.CONFIG, **changes
    )
    with pytest.raises(WireError, match=re.escape(error)):
        TrainInstruction.from_record(records)


def test_search_keys_without_a_mask_are_refused() -> None:
    """An objective without its mask is not a search round: the key is unexpected."""
    plain = EXAMPLES["TrainInstruction"].to_record()
    records = _edit_config(plain, wire.CONFIG, objective="saliency")
    with pytest.raises(WireError, match=re.escape("config.objective: unexpected key")):
        TrainInstruction.from_record(records)


def test_the_search_mask_counts_in_the_downlink() -> None:
    assert EXAMPLES["TrainInstruction+search"].size == len(b"model") + len(b"bits")
    assert EXAMPLES["TrainInstruction"].size == len(b"model")


def test_an_int_is_accepted_for_a_float() -> None:
    records = _edit_config(EXAMPLES["TrainInstruction"].to_record(), wire.CONFIG, lr=1)

    assert TrainInstruction.from_record(records).schedule.lr == 1.0


def test_a_wrong_stype_or_a_missing_array_names_the_field() -> None:
    records = EXAMPLES["TrainReply"].to_record()
    numpy = {wire.ARRAYS: {wire.PACKED: Blob("numpy.ndarray", b"x")}}
    wrong = dataclasses.replace(records, arrays=numpy)
    missing = dataclasses.replace(records, arrays={})

    with pytest.raises(WireError, match=re.escape("train reply: arrays.packed: expected stype")):
        TrainReply.from_record(wrong)
    with pytest.raises(WireError, match=re.escape("train reply: arrays: missing array record")):
        TrainReply.from_record(missing)
    assert TrainReply.payload_size(wrong) is None
    assert TrainReply.payload_size(records) == len(b"update")


@pytest.mark.parametrize(
    ("metrics", "error"),
    [
        (
            {"num-examples": 0, "loss": 0.1, "accuracy": 0.5},
            "num-examples: expected an integer >= 1",
        ),
        ({"num-examples": True, "loss": 0.1, "accuracy": 0.5}, "num-examples: expected int"),
        ({"num-examples": 5, "loss": float("nan"), "accuracy": 0.5}, "loss: expected a finite"),
        (
            {"num-examples": 5, "loss": 0.1, "accuracy": 1.5},
            "accuracy: 1.5 is outside [0.0, 1.0]",
        ),
        ({"num-examples": 5, "loss": 0.1, "accuracy": [0.5]}, "accuracy: expected float"),
        ({"num-examples": 5, "loss": 0.1}, "accuracy: missing"),
    ],
)
def test_a_bad_evaluation_names_the_field(metrics: dict[str, Any], error: str) -> None:
    with pytest.raises(WireError, match=re.escape(f"evaluate reply: metrics.{error}")):
        EvaluateReply.from_record(Records(metrics={wire.METRICS: metrics}))


def test_an_extra_record_is_refused_by_name() -> None:
    records = EXAMPLES["EvaluateReply"].to_record()
    extra = dataclasses.replace(records, metrics={**records.metrics, "more": {"accuracy": 1.0}})

    with pytest.raises(WireError, match=re.escape("evaluate reply: more: unexpected record")):
        EvaluateReply.from_record(extra)


def test_a_probe_needs_its_whole_schedule() -> None:
    records = _edit_config(EXAMPLES["EvaluateInstruction"].to_record(), wire.CONFIG, local_epochs=1)

    with pytest.raises(
        WireError, match=re.escape("evaluate instruction: config.batch-size: missing")
    ):
        EvaluateInstruction.from_record(records)


def test_an_ack_status_must_be_known() -> None:
    records = _edit_config(EXAMPLES["InstallAck"].to_record(), wire.ACK, status="maybe")

    with pytest.raises(WireError, match=re.escape("install ack: ack.status: expected 'installed'")):
        InstallAck.from_record(records)


def test_secagg_parts_that_travel_together() -> None:
    ask = SecAggRequest(1, 100, key_bundle=b"k", bundle_round=2).to_record()
    no_round = _edit_config(ask, wire.SECAGG, bundle_round=_DROP)
    half_dp = _edit_config(
        SecAggRequest(1, 100, mask_request=b"m", dp=SkellamParams(0.5, 100.0, 4.0)).to_record(),
        wire.SECAGG,
        dp_noise_var=_DROP,
    )
    bad_dp = _edit_config(
        SecAggRequest(1, 100, mask_request=b"m", dp=SkellamParams(0.5, 100.0, 4.0)).to_record(),
        wire.SECAGG,
        dp_scale=0.0,
    )

    with pytest.raises(WireError, match=re.escape("secagg request: secagg.bundle-round: missing")):
        SecAggRequest.from_record(no_round)
    with pytest.raises(WireError, match=re.escape("secagg.dp-noise-var: missing")):
        SecAggRequest.from_record(half_dp)
    with pytest.raises(WireError, match="secagg request: DP scale must be a positive"):
        SecAggRequest.from_record(bad_dp)
    counts = SecAggRequest(1, 100, mask_request=b"m", counts_schema="heart-uci", count_cap=9)
    no_cap = _edit_config(counts.to_record(), wire.SECAGG, count_cap=_DROP)
    zero_cap = _edit_config(counts.to_record(), wire.SECAGG, count_cap=0)
    with pytest.raises(WireError, match=re.escape("secagg.count-cap: missing")):
        SecAggRequest.from_record(no_cap)
    with pytest.raises(WireError, match=re.escape("secagg.count-cap:")):
        SecAggRequest.from_record(zero_cap)
    with pytest.raises(WireError, match="a counts schema and its cap travel together"):
        SecAggRequest(1, 100, mask_request=b"m", count_cap=9)
    with pytest.raises(WireError, match="counts go with a mask request and without DP"):
        SecAggRequest(1, 100, counts_schema="heart-uci", count_cap=9)
    with pytest.raises(
        WireError, match=re.escape("secagg reply: secagg.masked-input: expected bytes")
    ):
        SecAggReply.from_record(Records(configs={wire.SECAGG: {wire.MASKED_INPUT: 3}}))


def test_wire_errors_are_ticket_errors() -> None:
    assert issubclass(WireError, TicketError)


# A wire change is a conscious act: every message's records and keys, pinned.
SEARCH_STEP_LAYOUT = {  # a fleet search's train instruction, whatever its objective
    "arrays": {"arrays": ["packed", "search-mask"]},
    "config": {
        "config": [
            "batch-size",
            "dtype",
            "local-epochs",
            "lr",
            "objective",
            "optimizer",
            "saliency-scale",
            "seed",
            "server-round",
            "ticket-id",
        ]
    },
}
GOLDEN = {
    "TrainInstruction": {
        "arrays": {"arrays": ["packed"]},
        "config": {
            "config": [
                "batch-size",
                "dtype",
                "local-epochs",
                "lr",
                "optimizer",
                "seed",
                "server-round",
                "ticket-id",
            ]
        },
    },
    "TrainInstruction+search": SEARCH_STEP_LAYOUT,
    "TrainInstruction+saliency": SEARCH_STEP_LAYOUT,
    "TrainReply": {
        "arrays": {"arrays": ["packed"]},
        "metrics": {"metrics": ["num-examples", "train-loss"]},
    },
    "EvaluateInstruction": {
        "arrays": {"arrays": ["packed"]},
        "config": {"config": ["server-round", "ticket-id"]},
    },
    "EvaluateInstruction+probe": {
        "arrays": {"arrays": ["packed"]},
        "config": {
            "config": [
                "batch-size",
                "local-epochs",
                "lr",
                "optimizer",
                "seed",
                "server-round",
                "ticket-id",
            ]
        },
    },
    "EvaluateReply": {"metrics": {"metrics": ["accuracy", "loss", "num-examples"]}},
    "EvaluateReply+auc": {"metrics": {"metrics": ["accuracy", "auc", "loss", "num-examples"]}},
    "InstallPush": {"arrays": {"bundle": ["ticket"]}, "config": {"config": ["ticket-id"]}},
    "InstallAck": {"config": {"ack": ["reason", "status", "ticket-id"]}},
    "InstallAck+rejected": {"config": {"ack": ["reason", "status", "ticket-id"]}},
    "ModelPush": {
        "arrays": {"final-model": ["packed"]},
        "config": {"config": ["server-round", "ticket-id"]},
    },
    "ModelAck": {"config": {"ack": ["reason", "status"]}},
    "ModelAck+rejected": {"config": {"ack": ["reason", "status"]}},
    "SecAggRequest": {
        "config": {
            "secagg": [
                "advert-round",
                "dp-clip-norm",
                "dp-noise-var",
                "dp-scale",
                "mask-request",
                "round",
                "weight-cap",
            ]
        }
    },
    "SecAggRequest+unmask": {
        "config": {
            "secagg": ["bundle-round", "key-bundle", "round", "unmask-request", "weight-cap"]
        }
    },
    "SecAggRequest+advert": {"config": {"secagg": ["advert-round", "round", "weight-cap"]}},
    "SecAggRequest+counts": {
        "config": {"secagg": ["count-cap", "counts-schema", "mask-request", "round", "weight-cap"]}
    },
    "SecAggReply": {"config": {"secagg": ["key-advert", "masked-input"]}},
    "SecAggReply+unmask": {"config": {"secagg": ["share-bundle", "unmask-response"]}},
}
GOLDEN_STYPES = {
    "packed": "ticketfleet.codec",
    "search-mask": "ticketfleet.mask",
    "ticket": "ticketfleet.bundle",
}
GOLDEN_ERROR_CODES = {
    "NODE_CONFIG": 1001,
    "TICKET": 1002,
    "LOCAL_DATA": 1003,
    "INSTRUCTIONS": 1004,
    "SECAGG": 1005,
}


def _layout(records: Records) -> dict[str, dict[str, list[str]]]:
    kinds = {"arrays": records.arrays, "config": records.configs, "metrics": records.metrics}
    return {
        kind: {name: sorted(keys) for name, keys in by_name.items()}
        for kind, by_name in kinds.items()
        if by_name
    }


def test_the_key_names_of_every_message_are_pinned() -> None:
    seen = {name: _layout(message.to_record()) for name, message in EXAMPLES.items()}
    stypes = {
        key: blob.stype
        for message in EXAMPLES.values()
        for arrays in message.to_record().arrays.values()
        for key, blob in arrays.items()
    }

    assert seen == GOLDEN
    assert stypes == GOLDEN_STYPES
    assert {code.name: int(code) for code in wire.ErrorCode} == GOLDEN_ERROR_CODES


# ---------------------------------------------------------------- one home for every key

# Files where a wire key's word is, legitimately, a key of another format: file -> words.
# Every entry must still occur in its file (test below), so the list cannot go stale.
_RUN_LOG = "rounds.jsonl / deploy.json / status fields"
OTHER_FORMATS: dict[str, tuple[set[str], str]] = {
    "ticket/crypto.py": ({"round"}, "a signed header's field"),
    "ticket/data/__init__.py": ({"dataset"}, "the registry's kind, for its errors"),
    "ticket/data/encode.py": ({"dataset"}, "the UCI table's site column"),
    "ticket/data/heart.py": ({"dataset"}, "the UCI table's site column; the encoding recipe"),
    "ticket/data/mnist.py": ({"dataset"}, "the encoding recipe"),
    "ticket/data/partition.py": ({"seed"}, "a partitioner option"),
    "ticket/secagg/messages.py": ({"round"}, "a protocol message header's field"),
    "ticket/tensorfile.py": ({"dtype"}, "the tensor file's JSON header"),
    "ticket/train_config.py": (
        {"accuracy", "auc", "loss"},
        "EvalResult.as_dict: server-side scores",
    ),
    "edge_daemon/cli.py": ({"status"}, "a subcommand"),
    "edge_daemon/state.py": ({"round"}, "the daemon state file's last_round"),
    "edge_daemon/status_report.py": ({"round"}, "the daemon state file's last_round"),
    "server/checkpoint.py": ({"packed", "round"}, "the checkpoint file's fields"),
    "server/cli.py": ({"status"}, "a subcommand"),
    "server/deployments.py": ({"reason"}, "the ledger event's field"),
    "server/delivery_record.py": ({"kept"}, "final-model.json's per-node lists"),
    "server/enrolment.py": ({"status"}, "a subcommand"),
    "server/deadline_grid.py": ({"round"}, _RUN_LOG + ": a late reply's entry"),
    "server/encoding_fit.py": ({"rejected", "round"}, "the encoding fit's record (to_json)"),
    "server/fleet.py": ({"round"}, _RUN_LOG),
    "server/fleet_search.py": ({"loss", "round"}, _RUN_LOG),
    "server/metrics.py": ({"accuracy"}, "server-side evaluation scores"),
    "server/privacy.py": ({"round", "secagg"}, _RUN_LOG),
    "server/rollout.py": ({"accuracy", "reason"}, _RUN_LOG),
    "server/round_policy.py": ({"round"}, _RUN_LOG),
    "server/run_log.py": (
        {"accuracy", "auc", "loss", "rejected", "round", "secagg", "train-loss"},
        _RUN_LOG,
    ),
    "server/run_control.py": ({"reason"}, "the stop request's field"),
    "server/run_status.py": ({"accuracy", "rejected", "round", "secagg", "ticket"}, _RUN_LOG),
    "server/search_jobs.py": ({"ticket"}, "the search job file's field"),
    "server/service.py": ({"round", "status"}, _RUN_LOG + "; `flwr supernode list` fields"),
    "server/strategy.py": ({"rejected"}, "the train stage's count in Flower's Result"),
    "server/superlink.py": ({"status"}, "a subcommand"),
    "server/training_run.py": ({"secagg", "ticket"}, _RUN_LOG),
    "ticket_cli/cli.py": ({"ticket"}, "the command's name"),
    "ticket_cli/cmd_deploy.py": ({"reason", "status"}, _RUN_LOG),
    "ticket_cli/cmd_find.py": ({"accuracy", "auc", "lr", "optimizer"}, "options and report"),
    "ticket_cli/cmd_inspect.py": (
        {"accuracy", "auc", "kept", "loss", "metrics", "ticket"},
        "manifest; a table column",
    ),
    "ticket_cli/cmd_registry.py": ({"accuracy", "auc", "dataset", "ticket"}, "registry index"),
    "ticket_cli/hub_client.py": ({"bundle", "dataset"}, "the hub's JSON API"),
    "ticket_cli/find_report.py": ({"accuracy", "auc", "ticket"}, "find report"),
    "ticket_cli/find_runner.py": ({"accuracy", "metrics", "ticket"}, "find report"),
    "ticket_cli/registry.py": ({"accuracy", "auc", "metrics", "ticket"}, "registry index"),
    "loopback/demo.py": (
        {"accuracy", "auc", "loss", "rejected", "round", "status", "train-loss"},
        "the rounds.jsonl and deploy.json fields it prints",
    ),
    "loopback/devices.py": ({"dataset", "status"}, "the UCI table's site column; a subcommand"),
    "loopback/launcher.py": ({"round"}, _RUN_LOG),
    "loopback/mnist_tickets.py": ({"accuracy"}, "the manifest's metrics it sums up"),
}


def _wire_keys() -> set[str]:
    tree = ast.parse((ROOT / "ticket" / "wire.py").read_text())
    keys = set()
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Constant):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            if names and names[0].isupper() and isinstance(node.value.value, str):
                keys.add(node.value.value)
    return keys


def _string_literals(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    }


def test_wire_declares_the_keys_the_issue_lists() -> None:
    keys = _wire_keys()

    assert {"arrays", "config", "metrics", "packed", "ticketfleet.codec", "secagg"} <= keys
    assert {"mask-request", "share-bundle", "num-examples", "ticket-id", "ack"} <= keys


def test_every_wire_key_is_written_in_wire_py_only() -> None:
    keys = _wire_keys()
    violations = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = path.relative_to(ROOT).as_posix()
            if name == "ticket/wire.py":
                continue
            allowed = OTHER_FORMATS.get(name, (set(), ""))[0]
            violations += [
                f"{name}: {key!r}" for key in sorted(_string_literals(path) & keys - allowed)
            ]

    assert violations == []


def test_the_allowlist_is_tight() -> None:
    keys = _wire_keys()
    for name, (words, why) in OTHER_FORMATS.items():
        assert words <= keys and why, name
        assert words <= _string_literals(ROOT / name), f"{name}: drop what no longer occurs"
