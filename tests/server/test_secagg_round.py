"""SecurePackedFedAvg in-process against the real ClientApp: heart-uci, 4 hospitals, 4 nodes.

The oracle is the plaintext PackedFedAvg run on the same nodes: training is seeded by (run seed,
round, node), so both runs train the same local models and the secure global must equal the
plaintext weighted mean within the quantisation bound of ticket/secagg/weighting.py.
"""

import dataclasses
import json
import random
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.serverapp.strategy import FedAvg, Result

from edge_daemon import client_app
from edge_daemon.local_data import LocalDataSpec, load_local_data
from server.secagg_round import SecAggPlan, SecurePackedFedAvg
from server.server_app import RunConfigError, ServerSettings
from server.strategy import PAYLOAD_KEY, PackedFedAvg, RoundPlan
from server.training_run import run_resumable
from tests.inprocess import ClientCallable, InProcessGrid, heart_nodes, server_identity
from ticket import crypto, wire
from ticket.bundle import Ticket
from ticket.packing import PackLayout
from ticket.secagg import Enrolled, Roster, SecAggParams, certify, choose_quantization
from ticket.secagg.params import PARAMS_BYTES
from ticket.secagg.weighting import mean_error_bound, node_weight
from ticket.train_config import TrainConfig
from ticket.wire import SECAGG as SECAGG_KEY
from ticket.wire import ErrorCode

TRAIN = TrainConfig(epochs=1, batch_size=32, lr=1e-3)
SECAGG = SecAggPlan(clip=0.25, levels=2**14, weight_cap=1000)
NODES = [101, 102, 103, 104]


@pytest.fixture(scope="module")
def examples(ticket_path: Path, ticket: Ticket) -> dict[int, int]:
    """Training rows per node (the four hospitals' natural split), for the error bound."""
    preprocessing = ticket.manifest.data.preprocessing
    return {
        node: int(
            load_local_data(LocalDataSpec.from_node_config(config), preprocessing).y_train.shape[0]
        )
        for node, config in zip(NODES, heart_nodes(ticket_path), strict=True)
    }


def _plan(ticket: Ticket) -> RoundPlan:
    return RoundPlan(ticket_id=ticket.content_id, train=TRAIN)


def _secure(ticket: Ticket) -> SecurePackedFedAvg:
    layout = PackLayout.from_ticket(ticket)
    return SecurePackedFedAvg(layout, _plan(ticket), SECAGG, fraction_evaluate=0.0)


def _plain(ticket: Ticket) -> PackedFedAvg:
    return PackedFedAvg(PackLayout.from_ticket(ticket), _plan(ticket), fraction_evaluate=0.0)


def _initial(ticket: Ticket) -> ArrayRecord:
    return ArrayRecord({PAYLOAD_KEY: Array(PackLayout.from_ticket(ticket).pack(ticket.weights))})


def _run(strategy: FedAvg, grid: InProcessGrid, ticket: Ticket, rounds: int = 1) -> Result:
    random.seed(0)
    with server_identity():
        return strategy.start(
            grid=grid, initial_arrays=_initial(ticket), num_rounds=rounds, timeout=60
        )


def _steps(message: Message) -> set[str]:
    """The secagg parts an instruction carries, plus its message type."""
    parts = message.content.config_records.get(SECAGG_KEY)
    return {message.metadata.message_type, *(parts.keys() if parts else ())}


class LossyGrid(InProcessGrid):
    """Delivers every instruction, but loses the replies `lose(instruction)` picks: what the
    server sees when a node goes away after receiving it (the round timeout ends the step)."""

    def __init__(self, lose: Callable[[Message], bool], *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lose = lose
        self.timeouts: list[float | None] = []

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        self.timeouts.append(timeout)
        messages = list(messages)
        lost = {m.metadata.dst_node_id for m in messages if self.lose(m)}
        replies = super().send_and_receive(messages, timeout=timeout)
        return [reply for reply in replies if reply.metadata.src_node_id not in lost]


def _dropping(node_id: int) -> ClientCallable:
    def client(message: Message, context: Context) -> Message:
        if context.node_id == node_id:
            raise RuntimeError("node went away")
        return client_app.app(message, context)

    return client


def _final(result: Result) -> np.ndarray:
    return result.arrays[PAYLOAD_KEY].numpy()


def _bound(examples: dict[int, int], survivors: Iterable[int]) -> float:
    nodes = list(survivors)
    weight = sum(node_weight(examples[n], SECAGG.weight_cap) for n in nodes)
    return mean_error_bound(SECAGG.params(), nodes=len(nodes), weight=weight) + 1e-6


def test_a_secure_round_gives_the_plaintext_weighted_mean(
    ticket_path: Path, ticket: Ticket, examples: dict[int, int]
) -> None:
    nodes = heart_nodes(ticket_path)
    secure, plain = _secure(ticket), _plain(ticket)
    grid = LossyGrid(lambda message: False, client_app.app, nodes)

    result = _run(secure, grid, ticket, rounds=2)
    expected = _run(plain, InProcessGrid(client_app.app, nodes), ticket, rounds=1)

    one, two = secure.rounds[1], secure.rounds[2]
    assert one.accepted == NODES and one.failures == {} and one.rejected == {}
    assert one.secagg is not None and one.secagg["aborted"] is None
    assert one.secagg["survivors"] == NODES and one.secagg["dropped"] == {}
    # Setup (2 trips) before round 1; then 2 per round: train + mask, unmask + shares.
    assert one.round_trips == {"setup": 2, "train": 1, "unmask": 1}
    assert two.round_trips == {"train": 1, "unmask": 1}
    assert set(grid.timeouts) == {60}  # every step bounded by the round timeout
    assert all(two.bytes_up[node] > 0 and two.bytes_down[node] > 0 for node in NODES)
    assert 0 < one.train_metrics[wire.TRAIN_LOSS] < 2
    # Round 1's global against the plaintext example-weighted mean of the same local models.
    first = secure_first_round(ticket_path, ticket)
    error = np.abs(first - _final(expected)).max()
    assert error <= _bound(examples, NODES)
    assert _final(result).shape == _final(expected).shape


def secure_first_round(ticket_path: Path, ticket: Ticket) -> np.ndarray:
    strategy = _secure(ticket)
    return _final(_run(strategy, InProcessGrid(client_app.app, heart_nodes(ticket_path)), ticket))


def _loses(node: int, step: str) -> Callable[[Message], bool]:
    return lambda message: message.metadata.dst_node_id == node and step in _steps(message)


@pytest.mark.parametrize(
    "case",
    [
        (wire.KEY_BUNDLE, "shares", False),  # lost before sending its shares: not a member
        (wire.MASK_REQUEST, "mask", False),  # lost before its masked vector arrived
        (wire.UNMASK_REQUEST, "unmask", True),  # lost after: its vector is in the sum
    ],
    ids=["before-shares", "before-mask", "before-unmask"],
)
def test_a_node_lost_at_any_stage_leaves_the_survivors_sum(
    ticket_path: Path, ticket: Ticket, examples: dict[int, int], case: tuple[str, str, bool]
) -> None:
    step, stage, counted = case
    nodes = heart_nodes(ticket_path)
    secure = _secure(ticket)

    result = _run(secure, LossyGrid(_loses(103, step), client_app.app, nodes), ticket)

    survivors = NODES if counted else [101, 102, 104]
    oracle = client_app.app if counted else _dropping(103)
    expected = _run(_plain(ticket), InProcessGrid(oracle, nodes), ticket)
    record = secure.rounds[1]
    assert record.secagg is not None and record.secagg["aborted"] is None
    assert record.secagg["dropped"] == {stage: [103]}
    assert record.accepted == survivors
    assert record.failures[103].startswith("no reply before the round timeout")
    assert np.abs(_final(result) - _final(expected)).max() <= _bound(examples, survivors)


def test_too_many_dropouts_abort_the_round_keep_the_model_and_log_it(
    ticket_path: Path, ticket: Ticket, tmp_path: Path
) -> None:
    layout = PackLayout.from_ticket(ticket)
    lost = {102, 103, 104}

    def lose(message: Message) -> bool:  # round 1's masked vectors, all but one
        config = message.content.config_records.get(SECAGG_KEY)
        is_mask = wire.MASK_REQUEST in _steps(message) and config is not None
        return message.metadata.dst_node_id in lost and is_mask and config[wire.ROUND] == 1

    strategy = _secure(ticket)
    grid = LossyGrid(lose, client_app.app, heart_nodes(ticket_path))
    random.seed(0)
    with server_identity():
        run_resumable(
            strategy,
            grid,
            layout.pack(ticket.weights),
            run_dir=tmp_path / "run",
            num_rounds=2,
            timeout=60,
        )

    one, two = (
        json.loads(line) for line in (tmp_path / "run/rounds.jsonl").read_text().splitlines()
    )
    assert one["participants"] == [] and "need 2" in one["secagg"]["aborted"]
    assert one["secagg"]["dropped"] == {"mask": [102, 103, 104]}
    assert one["secagg"]["members"] == NODES
    # Their next-round adverts were lost with the replies: round 2 sets up keys afresh.
    assert two["secagg"]["aborted"] is None and two["participants"] == NODES
    assert two["round_trips"] == {"setup": 2, "train": 1, "unmask": 1, "total": 4}
    assert strategy.rounds[1].accepted == []


def test_an_aborted_round_leaves_the_global_model_unchanged(
    ticket_path: Path, ticket: Ticket
) -> None:
    lose_all_but_one = LossyGrid(
        lambda m: m.metadata.dst_node_id != 101 and wire.MASK_REQUEST in _steps(m),
        client_app.app,
        heart_nodes(ticket_path),
    )
    strategy = _secure(ticket)

    result = _run(strategy, lose_all_but_one, ticket)

    assert PAYLOAD_KEY not in result.arrays  # no aggregate: Flower keeps the previous global
    assert result.train_metrics_clientapp[1]["aborted"] == 1
    assert strategy.rounds[1].secagg is not None
    assert strategy.rounds[1].secagg["aborted"]


def test_a_masked_vector_replayed_from_an_earlier_round_is_rejected(
    ticket_path: Path, ticket: Ticket, examples: dict[int, int]
) -> None:
    kept: dict[str, bytes] = {}

    def replaying(message: Message, context: Context) -> Message:
        reply = client_app.app(message, context)
        if context.node_id == 102 and reply.has_content():
            parts = reply.content.config_records[SECAGG_KEY]
            if wire.MASKED_INPUT in parts:
                kept.setdefault("round-1", parts[wire.MASKED_INPUT])  # type: ignore[arg-type]
                parts[wire.MASKED_INPUT] = kept["round-1"]  # round 2 gets round 1's again
        return reply

    strategy = _secure(ticket)
    _run(strategy, InProcessGrid(replaying, heart_nodes(ticket_path)), ticket, rounds=2)

    one, two = strategy.rounds[1], strategy.rounds[2]
    assert one.accepted == NODES and one.rejected == {}
    assert "masked input refused" in two.rejected[102] and "round" in two.rejected[102]
    assert two.accepted == [101, 103, 104]  # its masks were removed with its key's shares
    assert two.secagg is not None and two.secagg["dropped"] == {"mask": [102]}


def test_a_node_that_lost_its_state_sits_the_round_out(ticket_path: Path, ticket: Ticket) -> None:
    def forgetful(message: Message, context: Context) -> Message:
        if context.node_id == 104 and wire.MASK_REQUEST in _steps(message):
            context.state.config_records.clear()  # e.g. its SuperNode restarted
        return client_app.app(message, context)

    strategy = _secure(ticket)
    _run(strategy, InProcessGrid(forgetful, heart_nodes(ticket_path)), ticket)

    record = strategy.rounds[1]
    assert record.failures[104].startswith(f"error {int(ErrorCode.SECAGG)} (train)")
    assert "no secure aggregation state for round 1" in record.failures[104]
    assert record.accepted == [101, 102, 103]


def test_a_resumed_run_sets_up_keys_again(
    ticket_path: Path, ticket: Ticket, tmp_path: Path
) -> None:
    layout = PackLayout.from_ticket(ticket)
    for rounds in (1, 2):  # two ServerApp processes: the second resumes after round 1
        strategy = _secure(ticket)
        random.seed(0)
        with server_identity():
            run_resumable(
                strategy,
                InProcessGrid(client_app.app, heart_nodes(ticket_path)),
                layout.pack(ticket.weights),
                run_dir=tmp_path / "run",
                num_rounds=rounds,
                timeout=60,
            )

    lines = [json.loads(line) for line in (tmp_path / "run/rounds.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [1, 2]
    assert lines[1]["round_trips"]["setup"] == 2 and lines[1]["participants"] == NODES


def test_run_config_turns_secure_aggregation_on_and_checks_its_keys() -> None:
    base = {
        "ticket-path": "/t.ticket",
        "run-dir": "/run",
        "num-rounds": 2,
        "local-epochs": 1,
        "batch-size": 32,
        "lr": 1e-3,
    }

    assert ServerSettings.from_run_config(base).secagg is None
    settings = ServerSettings.from_run_config({**base, "secagg": True, "secagg-clip": 0.5})
    assert settings.secagg == SecAggPlan(clip=0.5, levels=2**14, weight_cap=1000)
    with pytest.raises(RunConfigError, match="levels"):
        ServerSettings.from_run_config({**base, "secagg": True, "secagg-levels": 1})
    with pytest.raises(RunConfigError, match="secagg-weight-cap: must be a whole number >= 1"):
        ServerSettings.from_run_config({**base, "secagg": True, "secagg-weight-cap": 0})


def test_a_target_error_no_round_could_meet_is_refused_before_any_round() -> None:
    base = {"ticket-path": "/t.ticket", "run-dir": "/run", "secagg": True, "min-nodes": 4}

    settings = ServerSettings.from_run_config({**base, "secagg-target-error": 1e-3})
    assert settings.secagg is not None and settings.secagg.target_error == 1e-3
    # 2 devices (the fewest a round is summed from) would need 3.5e8 levels.
    with pytest.raises(RunConfigError, match=r"secagg-target-error: .* over 2 devices needs"):
        ServerSettings.from_run_config({**base, "secagg-target-error": 1e-9})
    # A round goal of 400 000 over-selects 520 000 devices: their sum would not fit 32 bits.
    goal = {**base, "secagg-target-error": 1e-7, "round-goal": 400_000, "min-replies": 2}
    with pytest.raises(RunConfigError, match=r"over 520000 devices .* needs 33 bits"):
        ServerSettings.from_run_config(goal)
    with pytest.raises(RunConfigError, match="secagg-target-error"):
        ServerSettings.from_run_config({**base, "secagg-target-error": -1.0})


def test_a_target_error_picks_each_rounds_levels_and_keeps_the_plaintext_mean(
    ticket_path: Path, ticket: Ticket, examples: dict[int, int]
) -> None:
    nodes = heart_nodes(ticket_path)
    plan = dataclasses.replace(SECAGG, target_error=1e-3)
    layout = PackLayout.from_ticket(ticket)
    secure = SecurePackedFedAvg(layout, _plan(ticket), plan, fraction_evaluate=0.0)

    result = _run(secure, InProcessGrid(client_app.app, nodes), ticket)
    expected = _run(_plain(ticket), InProcessGrid(client_app.app, nodes), ticket)

    chosen = choose_quantization(4, clip=0.25, length=layout.size + 2, target_error=1e-3)
    record = secure.rounds[1]
    assert record.secagg is not None and record.secagg["aborted"] is None
    assert (record.secagg["levels"], record.secagg["bits"]) == (chosen.levels, 11)
    assert chosen.levels < SECAGG.levels
    weight = sum(node_weight(examples[n], SECAGG.weight_cap) for n in NODES)
    params = SecAggParams(clip=0.25, levels=chosen.levels)
    bound = mean_error_bound(params, nodes=4, weight=weight)
    assert np.abs(_final(result) - _final(expected)).max() <= bound


# ---------------------------------------------------------------- an enrolled fleet


def _enrolled(
    tmp_path: Path, ticket_path: Path, nodes: Iterable[int] = NODES
) -> tuple[list[dict[str, bool | float | int | str]], Roster]:
    """Node configs as edge-daemon writes them (auth-key, fleet-key, no opt-out), and the
    roster `fleet-server enroll` makes: `nodes`' keys certified by the fleet key."""
    signing, public = crypto.generate_signing_key()
    (tmp_path / "fleet.pub").write_bytes(public)
    configs, roster = [], {}
    strict = {wire.NODE_SECAGG_ALLOW_UNCERTIFIED: False}
    for node, config in zip(NODES, heart_nodes(ticket_path, **strict), strict=True):
        private, line = crypto.generate_node_auth_key(f"node-{node}")
        (tmp_path / f"{node}.key").write_bytes(private)
        identity = crypto.identity_of_public_line(line.encode())
        if node in nodes:
            roster[node] = Enrolled(identity, certify(signing, node, identity))
        configs.append(
            {
                **config,
                wire.NODE_AUTH_KEY: str(tmp_path / f"{node}.key"),
                wire.NODE_FLEET_KEY: str(tmp_path / "fleet.pub"),
            }
        )
    return configs, roster


class TamperingGrid(InProcessGrid):
    """Relays every message, but flips bit 0 of node 102's mask key in node 101's key bundle:
    issue 12's probe, which used to give a wrong sum with every node counted."""

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        for message in messages:
            parts = message.content.config_records.get(SECAGG_KEY)
            if message.metadata.dst_node_id == 101 and parts and wire.KEY_BUNDLE in parts:
                bundle = bytearray(parts[wire.KEY_BUNDLE])  # type: ignore[arg-type]
                # header | params | cohort (4 ids) | peer count | 102's id | its cipher key
                mask_key = 36 + PARAMS_BYTES + 4 + 8 * 4 + 4 + 8 + 32
                bundle[mask_key] ^= 0x01
                parts[wire.KEY_BUNDLE] = bytes(bundle)
        return super().send_and_receive(messages, timeout=timeout)


def test_an_altered_key_in_a_relayed_bundle_is_refused_and_the_others_sum_stands(
    ticket_path: Path, ticket: Ticket, examples: dict[int, int], tmp_path: Path
) -> None:
    configs, roster = _enrolled(tmp_path, ticket_path)
    layout = PackLayout.from_ticket(ticket)
    secure = SecurePackedFedAvg(layout, _plan(ticket), SECAGG, roster=roster, fraction_evaluate=0)

    result = _run(secure, TamperingGrid(client_app.app, configs), ticket)

    record = secure.rounds[1]
    assert record.secagg is not None and record.secagg["aborted"] is None
    # 101 named the altered neighbour and sat the round out; 102-104 checked each other's
    # certificates and signatures and masked only with each other.
    assert f"error {int(ErrorCode.SECAGG)} (setup)" in record.failures[101]
    assert "AuthenticationError: node 102's key advert" in record.failures[101]
    assert record.secagg["dropped"] == {"shares": [101]}
    assert record.accepted == [102, 103, 104]
    expected = _run(_plain(ticket), InProcessGrid(_dropping(101), configs), ticket)
    assert np.abs(_final(result) - _final(expected)).max() <= _bound(examples, [102, 103, 104])


def test_the_server_leaves_out_a_node_the_roster_does_not_certify(
    ticket_path: Path, ticket: Ticket, tmp_path: Path
) -> None:
    configs, roster = _enrolled(tmp_path, ticket_path, nodes=(101, 102, 103))
    layout = PackLayout.from_ticket(ticket)
    secure = SecurePackedFedAvg(layout, _plan(ticket), SECAGG, roster=roster, fraction_evaluate=0)

    _run(secure, InProcessGrid(client_app.app, configs), ticket)

    record = secure.rounds[1]
    assert "no certified identity key in the roster" in record.rejected[104]
    assert record.accepted == [101, 102, 103]
    assert record.secagg is not None and record.secagg["aborted"] is None


def test_a_node_that_cannot_check_its_neighbours_refuses_the_round_by_name(
    ticket_path: Path, ticket: Ticket
) -> None:
    strict = heart_nodes(ticket_path, **{wire.NODE_SECAGG_ALLOW_UNCERTIFIED: False})
    secure = _secure(ticket)

    _run(secure, InProcessGrid(client_app.app, strict), ticket)

    record = secure.rounds[1]
    assert record.accepted == []
    assert all("trusts no fleet key" in record.failures[node] for node in NODES)
