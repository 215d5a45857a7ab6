"""The ClientApp's secure aggregation steps, driven by hand-built query messages."""

import os
import stat
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from edge_daemon import client_app
from edge_daemon.secagg_client import StateStore, state_file
from tests.inprocess import InProcessGrid, server_identity
from ticket import wire
from ticket.secagg import SecAggParams, ServerRound
from ticket.wire import SECAGG as SECAGG_KEY
from ticket.wire import ErrorCode

PARAMS = SecAggParams(clip=0.25)
DEV = {wire.NODE_SECAGG_ALLOW_UNCERTIFIED: True}  # bare nodes: nobody enrolled


def _ask(grid: InProcessGrid, node: int, **parts: int | bytes) -> Message:
    content = RecordDict({SECAGG_KEY: ConfigRecord({wire.ROUND: 1, wire.WEIGHT_CAP: 100, **parts})})
    message = Message(content, dst_node_id=node, message_type=MessageType.QUERY)
    [reply] = grid.send_and_receive([message], timeout=10)
    return reply


def _setup(grid: InProcessGrid) -> ServerRound:
    server = ServerRound(run_id=1, round=1, params=PARAMS, length=5)
    for node in grid.contexts:
        reply = _ask(grid, node, **{wire.ADVERT_ROUND: 1})
        server.add_advert(node, reply.content.config_records[SECAGG_KEY][wire.KEY_ADVERT])  # type: ignore[arg-type]
    for node, bundle in server.key_bundles().items():
        reply = _ask(grid, node, **{wire.KEY_BUNDLE: bundle, wire.BUNDLE_ROUND: 1})
        server.add_share_bundle(node, reply.content.config_records[SECAGG_KEY][wire.SHARE_BUNDLE])  # type: ignore[arg-type]
    return server


def test_state_is_mirrored_to_a_private_file_beside_the_daemon_state(tmp_path: Path) -> None:
    configs = [{**DEV, "state-path": str(tmp_path / f"node{i}/state.json")} for i in range(3)]
    with server_identity():
        grid = InProcessGrid(client_app.app, configs)
        server = _setup(grid)
        context = grid.contexts[101]
        path = state_file(context)
        assert path is not None and path.exists()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        context.state.config_records.clear()  # the SuperNode restarted: context.state is gone
        state = StateStore.of(context).node_round(1)
        assert state.secrets.node_id == 101 and not state.is_masked
        assert set(server.mask_requests()) == {101, 102, 103}


def test_a_query_without_a_secure_aggregation_step_is_an_error_reply() -> None:
    with server_identity():
        grid = InProcessGrid(client_app.app, [{}])
        message = Message(RecordDict(), dst_node_id=101, message_type=MessageType.QUERY)
        [reply] = grid.send_and_receive([message], timeout=10)
    assert reply.has_error() and reply.error.code == ErrorCode.INSTRUCTIONS


def test_a_key_bundle_for_a_round_without_keys_is_refused_with_the_secagg_code() -> None:
    with server_identity():
        grid = InProcessGrid(client_app.app, [DEV, DEV])
        reply = _ask(grid, 101, **{wire.KEY_BUNDLE: b"\0" * 40, wire.BUNDLE_ROUND: 1})
    assert reply.has_error() and reply.error.code == ErrorCode.SECAGG
    assert "no secure aggregation state for round 1" in reply.error.reason


def test_a_tampered_key_bundle_is_refused_without_crashing() -> None:
    with server_identity():
        grid = InProcessGrid(client_app.app, [DEV, DEV])
        server = ServerRound(run_id=1, round=1, params=PARAMS, length=5)
        for node in grid.contexts:
            reply = _ask(grid, node, **{wire.ADVERT_ROUND: 1})
            server.add_advert(node, reply.content.config_records[SECAGG_KEY][wire.KEY_ADVERT])  # type: ignore[arg-type]
        bundle = server.key_bundles()[101]
        reply = _ask(grid, 102, **{wire.KEY_BUNDLE: bundle, wire.BUNDLE_ROUND: 1})  # 101's, to 102
    assert reply.has_error() and reply.error.code == ErrorCode.SECAGG


def test_adverts_are_signed_with_the_node_auth_key_the_node_config_names(tmp_path: Path) -> None:
    from ticket import crypto
    from ticket.secagg.messages import KeyAdvert

    private, line = crypto.generate_node_auth_key("clinic")
    (tmp_path / "node.key").write_bytes(private)
    with server_identity():
        grid = InProcessGrid(client_app.app, [{wire.NODE_AUTH_KEY: str(tmp_path / "node.key")}])
        reply = _ask(grid, 101, **{wire.ADVERT_ROUND: 1})
    data = reply.content.config_records[SECAGG_KEY][wire.KEY_ADVERT]
    advert = KeyAdvert.from_bytes(data, run_id=1, round=1, sender=101, recipient=0)  # type: ignore[arg-type]
    assert advert.signed.identity == crypto.identity_of_public_line(line.encode())


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({wire.NODE_AUTH_KEY: "/nonexistent/node.key"}, "node config auth-key: cannot read"),
        ({wire.NODE_SECAGG_ALLOW_UNCERTIFIED: "yes"}, "secagg-allow-uncertified: not a boolean"),
        ({wire.NODE_FLEET_KEY: "/nonexistent/fleet.pub"}, "node config fleet-key: cannot read"),
    ],
)
def test_unusable_identity_settings_are_refused_with_the_secagg_code(
    config: dict[str, str], match: str
) -> None:
    with server_identity():
        grid = InProcessGrid(client_app.app, [config, config])
        server = ServerRound(run_id=1, round=1, params=PARAMS, length=5)
        replies = [_ask(grid, node, **{wire.ADVERT_ROUND: 1}) for node in grid.contexts]
        if wire.NODE_AUTH_KEY not in config:  # the advert is fine; the bundle's check is not
            for node, reply in zip(grid.contexts, replies, strict=True):
                server.add_advert(node, reply.content.config_records[SECAGG_KEY][wire.KEY_ADVERT])  # type: ignore[arg-type]
            bundle = server.key_bundles()[101]
            replies = [_ask(grid, 101, **{wire.KEY_BUNDLE: bundle, wire.BUNDLE_ROUND: 1})]
    assert replies[0].has_error() and replies[0].error.code == ErrorCode.SECAGG
    assert match in replies[0].error.reason


def test_who_is_trusted_follows_the_node_config(tmp_path: Path) -> None:
    from flwr.app import Context

    from edge_daemon.secagg_client import peer_trust

    def trust(config: dict[str, bool | float | int | str]) -> tuple[bool, bool]:
        got = peer_trust(Context(1, 101, config, RecordDict(), {}))
        return got.fleet_key is not None, got.allow_uncertified

    (tmp_path / "fleet.pub").write_bytes(b"-----BEGIN PUBLIC KEY-----\n")
    daemon = {wire.NODE_FLEET_KEY: str(tmp_path / "fleet.pub"), wire.NODE_STATE_PATH: "s"}
    assert trust(daemon) == (True, False)  # an edge daemon: certificates required
    assert trust({}) == (False, False)  # a bare node: it can check no one, so refuses
    assert trust(DEV) == (False, True)
    # The Simulation Engine's virtual nodes: one process plays every part.
    assert trust({wire.NODE_PARTITION_ID: 0, wire.NODE_NUM_PARTITIONS: 4}) == (False, True)
