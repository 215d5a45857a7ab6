"""Secure aggregation end to end: exact sums under dropouts, clean aborts, the reveal rule,
tampering, replays, and what the server sees of one masked vector."""

import random
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.ticket.secagg_sim import PARAMS, Drops, Simulation
from ticket import secagg
from ticket.errors import IntegrityError
from ticket.secagg import (
    SERVER,
    MessageError,
    NodeRound,
    RevealRefusedError,
    RoundAbortedError,
    RoundStateError,
    SecAggParams,
    unpack_bits,
)
from ticket.secagg.messages import MaskedInput, UnmaskRequest


def _threshold(n: int) -> int:
    return PARAMS.threshold(n)  # complete graph: every closed neighbourhood is the cohort


# ---------------------------------------------------------------- exact sums


def test_the_unmasked_sum_equals_the_plain_quantised_sum() -> None:
    sim = Simulation(nodes=(11, 12, 13, 14, 15), length=257)

    result = sim.run()

    assert result.survivors == sim.nodes
    assert result.bits == PARAMS.modulus_bits(5)
    np.testing.assert_array_equal(result.total.astype(np.int64), sim.plain_sum(sim.nodes))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(2, 12),
    length=st.integers(1, 40),
    degree_factor=st.sampled_from([1.0, 2.0]),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_the_sum_is_exact_or_the_round_aborts(
    n: int, length: int, degree_factor: float, seed: int, data: st.DataObject
) -> None:
    params = SecAggParams(clip=1.0, levels=2**10, degree_factor=degree_factor, complete_up_to=4)
    nodes = tuple(sorted(data.draw(st.sets(st.integers(1, 2**64 - 1), min_size=n, max_size=n))))
    stage = st.sets(st.sampled_from(nodes), max_size=max(1, n // 4))
    drops = Drops(data.draw(stage), data.draw(stage), data.draw(stage))
    sim = Simulation(
        nodes=nodes, length=length, params=params, seed=seed, run_id=seed, round=seed % 5
    )
    lost = set(drops.before_shares) | set(drops.before_mask) | set(drops.before_reveal)
    is_complete = params.degree(n) == n - 1
    is_guaranteed = is_complete and len(lost) <= n - params.threshold(n)

    try:
        result = sim.run(drops)
    except RoundAbortedError:
        assert not is_guaranteed
        return

    expected = set(nodes) - set(drops.before_shares) - set(drops.before_mask)
    assert set(result.survivors) <= expected
    np.testing.assert_array_equal(result.total.astype(np.int64), sim.plain_sum(result.survivors))


@pytest.mark.parametrize("stage", ["before_shares", "before_mask", "before_reveal"])
@pytest.mark.parametrize("dropped", [1, 2])
def test_up_to_n_minus_t_dropouts_at_any_stage_leave_the_survivors_sum(
    stage: str, dropped: int
) -> None:
    nodes = tuple(range(1, 8))  # n = 7, t = 5: two may drop
    assert len(nodes) - _threshold(len(nodes)) == 2
    sim = Simulation(nodes=nodes, length=64)

    result = sim.run(Drops(**{stage: nodes[:dropped]}))

    counted = nodes if stage == "before_reveal" else nodes[dropped:]
    assert result.survivors == counted
    np.testing.assert_array_equal(result.total.astype(np.int64), sim.plain_sum(counted))


@pytest.mark.parametrize("stage", ["before_shares", "before_mask", "before_reveal"])
def test_below_the_threshold_the_round_aborts(stage: str) -> None:
    nodes = tuple(range(1, 8))
    sim = Simulation(nodes=nodes, length=16)

    with pytest.raises(RoundAbortedError):
        sim.run(Drops(**{stage: nodes[:3]}))


def test_a_sparse_graph_round_survives_dropouts_at_every_stage() -> None:
    nodes = tuple(range(100, 130))  # n = 30: a Harary graph of degree 10, not complete
    sim = Simulation(nodes=nodes, length=32)
    drops = Drops(before_shares={100}, before_mask={110}, before_reveal={105})

    result = sim.run(drops)

    assert len(sim.states[101].peers) == PARAMS.degree(30) < 29
    assert set(result.survivors) == set(nodes) - {100, 110}
    np.testing.assert_array_equal(result.total.astype(np.int64), sim.plain_sum(result.survivors))


def test_a_larger_round_with_wide_ids_is_exact_under_dropouts_at_every_stage() -> None:
    # Fleet-like: 64-bit node ids (Flower's), a sparse graph, a vector length that leaves a
    # partial bit-packing group, and every batched step of the server's unmasking in play:
    # shares combined per owner, one summed PRG, dropped nodes' seeds with all their peers.
    rng = random.Random(13)
    nodes = tuple(sorted(rng.randrange(1, 2**64) for _ in range(48)))
    sim = Simulation(nodes=nodes, length=1001)
    drops = Drops(before_shares=nodes[:1], before_mask=nodes[5:8], before_reveal=nodes[20:22])

    result = sim.run(drops)

    assert PARAMS.degree(48) < 47
    assert set(result.survivors) == set(nodes) - set(nodes[:1]) - set(nodes[5:8])
    np.testing.assert_array_equal(result.total.astype(np.int64), sim.plain_sum(result.survivors))


def test_a_target_error_picks_the_rounds_levels_from_its_cohort() -> None:
    nodes = tuple(range(1, 13))
    sim = Simulation(nodes=nodes, length=300, target_error=1e-3)
    drops = Drops(before_shares={3}, before_mask={5})  # the cohort is the 12 advertisers

    result = sim.run(drops)

    chosen = secagg.choose_quantization(12, clip=PARAMS.clip, length=300, target_error=1e-3)
    assert result.params == replace(PARAMS, levels=chosen.levels) != PARAMS
    assert chosen.levels < PARAMS.levels  # 12 devices at 1e-3 need fewer than 2^10 levels
    assert result.bits == result.params.modulus_bits(11) < PARAMS.modulus_bits(11)
    fixed = Simulation(nodes=nodes, length=300)
    fixed.run(drops)
    assert len(sim.sent["masked"][1]) < len(fixed.sent["masked"][1])  # fewer bits a value
    np.testing.assert_array_equal(result.total.astype(np.int64), sim.plain_sum(result.survivors))
    exact = np.mean([sim.inputs[u].clip(-1, 1) for u in result.survivors], axis=0)
    assert np.sqrt(np.mean((result.mean() - exact) ** 2)) <= 1e-3 * PARAMS.clip


def test_a_target_error_no_quantisation_meets_aborts_the_round_at_key_setup() -> None:
    sim = Simulation(nodes=(1, 2, 3), length=8, target_error=1e-9)

    with pytest.raises(RoundAbortedError, match=r"no quantisation fits this round: .*2\^24"):
        sim.run()
    assert sim.server.phase is secagg.Phase.ADVERTISE  # nothing was sent to any node


def test_the_decoded_mean_is_close_to_the_float_mean() -> None:
    params = SecAggParams(clip=2.0, levels=2**14)
    sim = Simulation(nodes=(1, 2, 3, 4, 5), length=1000, params=params)

    result = sim.run()

    exact = np.mean([sim.inputs[n].astype(np.float64) for n in sim.nodes], axis=0)
    error = secagg.quantization_error(result.mean(), exact)
    assert error.max_abs <= 2 * params.clip / (params.levels - 1)


# ---------------------------------------------------------------- the reveal rule


def _masked_simulation() -> Simulation:
    sim = Simulation(nodes=(1, 2, 3, 4, 5), length=8)
    sim.setup(Drops())
    sim.mask(Drops(before_mask={5}))
    return sim


def _unmask_request(
    sim: Simulation, node: int, seeds: tuple[int, ...], keys: tuple[int, ...]
) -> bytes:
    sealed = tuple(
        (peer, sim.sent["shares_sealed"][peer][node]) for peer in sorted({*seeds, *keys} - {node})
    )
    return UnmaskRequest(sim.run_id, sim.round, SERVER, node, seeds, keys, sealed).to_bytes()


@pytest.fixture
def masked() -> Simulation:
    sim = _masked_simulation()
    sim.sent["shares_sealed"] = {node: dict(bundle) for node, bundle in sim.server.sealed.items()}
    return sim


def test_a_node_refuses_to_reveal_both_shares_of_one_peer(masked: Simulation) -> None:
    request = _unmask_request(masked, 1, (1, 2, 3, 4), (4, 5))
    with pytest.raises(RevealRefusedError, match="both"):
        secagg.reveal_shares(request, masked.states[1])


def test_a_node_refuses_to_flip_an_earlier_reveal(masked: Simulation) -> None:
    first = _unmask_request(masked, 1, (1, 2, 3, 4), (5,))
    _, state = secagg.reveal_shares(first, masked.states[1])
    flipped = _unmask_request(masked, 1, (1, 2, 3, 4, 5), ())

    with pytest.raises(RevealRefusedError, match="earlier"):
        secagg.reveal_shares(flipped, state)
    # Asking the same again is harmless: it reveals nothing new.
    secagg.reveal_shares(first, state)


def test_a_node_refuses_to_reveal_its_own_mask_key(masked: Simulation) -> None:
    with pytest.raises(RevealRefusedError, match="own mask key"):
        secagg.reveal_shares(_unmask_request(masked, 1, (2, 3, 4, 5), (1,)), masked.states[1])


def test_a_node_refuses_below_the_threshold(masked: Simulation) -> None:
    with pytest.raises(RevealRefusedError, match="threshold"):
        secagg.reveal_shares(_unmask_request(masked, 1, (1, 2), (5,)), masked.states[1])


def test_a_node_refuses_before_it_masked(masked: Simulation) -> None:
    unmasked_state = NodeRound.from_bytes(masked.states[1].to_bytes())
    with pytest.raises(RevealRefusedError, match="no masked vector"):
        secagg.reveal_shares(
            _unmask_request(masked, 1, (1, 2, 3, 4), (5,)), replace(unmasked_state, is_masked=False)
        )


def test_a_node_refuses_to_reveal_outside_its_neighbourhood() -> None:
    sim = Simulation(nodes=tuple(range(1, 31)), length=4)
    sim.setup(Drops())
    sim.mask(Drops())
    state = sim.states[1]
    stranger = min(set(sim.nodes) - set(state.holders))
    holders = state.holders
    request = UnmaskRequest(
        sim.run_id, sim.round, SERVER, 1, tuple(sorted({*holders, stranger})), (), ()
    ).to_bytes()

    with pytest.raises(RevealRefusedError, match="outside"):
        secagg.reveal_shares(request, state)


def test_a_late_vector_is_refused_and_its_node_stays_masked(masked: Simulation) -> None:
    requests = masked.server.unmask_requests()
    with pytest.raises(RoundStateError):
        masked.server.add_masked_input(5, masked.sent["mask_request"][5])
    # Node 5 counts as dropped: its neighbours are asked for its mask key, not its seed.
    for node, request in requests.items():
        parsed = UnmaskRequest.from_bytes(
            request, run_id=masked.run_id, round=masked.round, sender=SERVER, recipient=node
        )
        assert 5 in parsed.reveal_key_of
        assert 5 not in parsed.reveal_seed_of


def test_a_node_never_masks_twice(masked: Simulation) -> None:
    with pytest.raises(RoundStateError, match="second masked vector"):
        secagg.mask_input(
            masked.sent["mask_request"][1],
            masked.states[1],
            masked.inputs[1],
            rng=np.random.default_rng(0),
        )


def test_the_server_refuses_a_second_vector_from_a_node(masked: Simulation) -> None:
    with pytest.raises(RoundStateError, match="already"):
        masked.server.add_masked_input(1, masked.sent["masked"][1])


# ---------------------------------------------------------------- tampering and replays


def test_a_flipped_byte_anywhere_in_sealed_shares_is_one_opaque_error(masked: Simulation) -> None:
    request = masked.server.unmask_requests()[1]
    parsed = UnmaskRequest.from_bytes(
        request, run_id=masked.run_id, round=masked.round, sender=SERVER, recipient=1
    )
    blob = parsed.sealed[0][1]
    for position in range(len(blob)):
        broken = bytearray(blob)
        broken[position] ^= 0x01
        tampered = ((parsed.sealed[0][0], bytes(broken)), *parsed.sealed[1:])
        message = UnmaskRequest(
            masked.run_id,
            masked.round,
            SERVER,
            1,
            parsed.reveal_seed_of,
            parsed.reveal_key_of,
            tampered,
        ).to_bytes()
        with pytest.raises(IntegrityError) as caught:
            secagg.reveal_shares(message, masked.states[1])
        assert str(caught.value) == "authentication failed"


def test_sealed_shares_for_another_node_do_not_open(masked: Simulation) -> None:
    # Node 2's shares sealed to node 3, handed to node 1 as if node 2 had sealed them to it.
    parsed_for_1 = UnmaskRequest.from_bytes(
        masked.server.unmask_requests()[1],
        run_id=masked.run_id,
        round=masked.round,
        sender=SERVER,
        recipient=1,
    )
    swapped = tuple(
        (peer, masked.server.sealed[2][3] if peer == 2 else blob)
        for peer, blob in parsed_for_1.sealed
    )
    message = UnmaskRequest(
        masked.run_id,
        masked.round,
        SERVER,
        1,
        parsed_for_1.reveal_seed_of,
        parsed_for_1.reveal_key_of,
        swapped,
    ).to_bytes()

    with pytest.raises(IntegrityError):
        secagg.reveal_shares(message, masked.states[1])


def test_sealed_shares_of_another_round_do_not_open() -> None:
    old = Simulation(nodes=(1, 2, 3), length=4, round=3, seed=1)
    old.setup(Drops())
    new = Simulation(nodes=(1, 2, 3), length=4, round=4, seed=2)
    new.setup(Drops())
    new.mask(Drops())
    request = UnmaskRequest(
        new.run_id,
        new.round,
        SERVER,
        1,
        (1, 2, 3),
        (),
        ((2, old.server.sealed[2][1]), (3, new.server.sealed[3][1])),
    ).to_bytes()

    with pytest.raises(IntegrityError):
        secagg.reveal_shares(request, new.states[1])


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [("run_id", 8, "another run"), ("round", 4, "another round"), ("sender", 2, "another sender")],
)
def test_the_server_rejects_a_masked_vector_from_another_run_round_or_node(
    masked: Simulation, field: str, value: int, match: str
) -> None:
    original = MaskedInput.from_bytes(
        masked.sent["masked"][1],
        run_id=masked.run_id,
        round=masked.round,
        sender=1,
        recipient=SERVER,
    )
    forged = replace(original, **{field: value}).to_bytes()
    with pytest.raises(MessageError, match=match):
        masked.server.add_masked_input(1, forged)


def test_a_message_of_one_kind_is_not_accepted_as_another(masked: Simulation) -> None:
    with pytest.raises(MessageError, match="expected a MASKED_INPUT message, got KEY_ADVERT"):
        masked.server.add_masked_input(1, masked.sent["advert"][1])


def test_a_node_rejects_a_mask_request_for_another_node(masked: Simulation) -> None:
    other = Simulation(nodes=(1, 2, 3, 4, 5), length=8)
    other.setup(Drops())
    with pytest.raises(MessageError, match="another recipient"):
        secagg.mask_input(
            masked.sent["mask_request"][2],
            other.states[1],
            other.inputs[1],
            rng=np.random.default_rng(0),
        )


def test_a_node_rejects_last_rounds_mask_request() -> None:
    last = Simulation(nodes=(1, 2, 3), length=4, round=3)
    last.setup(Drops())
    last.mask(Drops())
    this = Simulation(nodes=(1, 2, 3), length=4, round=4)
    this.setup(Drops())

    with pytest.raises(MessageError, match="another round"):
        secagg.mask_input(
            last.sent["mask_request"][1],
            this.states[1],
            this.inputs[1],
            rng=np.random.default_rng(0),
        )


@pytest.mark.parametrize(
    ("silent", "match"),
    [
        ((), "inconsistent"),  # three shares for a threshold of two: the spare exposes it
        # Exactly two: the rebuilt value lands outside 32 bytes (else, with odds 2^-265, the
        # seed commitment would catch it).
        ((2,), "does not fit its length"),
    ],
)
def test_a_wrong_revealed_share_aborts_the_round_instead_of_a_wrong_sum(
    silent: tuple[int, ...], match: str
) -> None:
    def corrupt(step: str, node: int, data: bytes) -> bytes:
        if step == "reveal" and node == 1:
            return data[:-1] + bytes([data[-1] ^ 0x01])  # the last share's last byte
        return data

    sim = Simulation(nodes=(1, 2, 3), length=8, tap=corrupt)  # t = 2 of 3

    with pytest.raises(RoundAbortedError, match=match):
        sim.run(Drops(before_reveal=silent))


# ---------------------------------------------------------------- what the server sees


def test_a_masked_vector_looks_uniform_to_the_server() -> None:
    params = SecAggParams(clip=1.0, levels=2**12)
    sim = Simulation(nodes=(1, 2, 3, 4, 5), length=2**14, params=params, seed=1234)
    for node in sim.nodes:
        sim.inputs[node] = np.zeros(sim.length, np.float32)  # the most predictable input
    sim.setup(Drops())
    sim.mask(Drops())
    masked = MaskedInput.from_bytes(
        sim.sent["masked"][1], run_id=sim.run_id, round=sim.round, sender=1, recipient=SERVER
    )

    values = unpack_bits(masked.payload, masked.bits, masked.length)  # [k] mod 2^bits
    bins = 64
    counts = np.bincount(values >> (masked.bits - 6), minlength=bins)
    expected = sim.length / bins
    chi_square = float(((counts - expected) ** 2 / expected).sum())

    # 63 degrees of freedom: P(chi^2 > 103.4) = 0.001 for uniform data. The input alone
    # (all at the middle level) would put everything in one bin: chi^2 ~ 10^6.
    assert chi_square < 103.4
    # Distinct values: what k uniform draws from R values give (the input alone gives one).
    modulus = 2**masked.bits
    distinct = modulus * (1 - (1 - 1 / modulus) ** sim.length)
    assert abs(len(np.unique(values)) - distinct) < 0.02 * distinct


# ---------------------------------------------------------------- node state on disk


def test_node_state_survives_a_restart_mid_round(masked: Simulation) -> None:
    restored = {
        node: NodeRound.from_bytes(state.to_bytes()) for node, state in masked.states.items()
    }
    assert restored == masked.states
    masked.states = restored

    result = masked.unmask(Drops())

    np.testing.assert_array_equal(result.total.astype(np.int64), masked.plain_sum((1, 2, 3, 4)))


@pytest.mark.parametrize("data", [b"", b"{}", b"[1]", b'{"format": "other"}'])
def test_malformed_node_state_is_rejected(data: bytes) -> None:
    with pytest.raises(MessageError):
        NodeRound.from_bytes(data)


def _masked_without_15() -> tuple[Simulation, dict[int, bytes]]:
    """A 5-node round whose node 15 dropped before masking, and the survivors' reveals."""
    sim = Simulation(nodes=(11, 12, 13, 14, 15), length=33)
    sim.setup(Drops())
    sim.mask(Drops(before_mask=(15,)))
    responses = {}
    for node, request in sim.server.unmask_requests().items():
        responses[node], sim.states[node] = secagg.reveal_shares(request, sim.states[node])
    return sim, responses


def test_can_rebuild_says_exactly_which_unmask_responses_let_the_round_finish() -> None:
    import itertools

    survivors = sorted(_masked_without_15()[1])
    for size in range(len(survivors) + 1):
        for responders in itertools.combinations(survivors, size):
            sim, responses = _masked_without_15()  # result() ends a round: a fresh one each
            predicted = sim.server.can_rebuild(responders)
            for node in responders:
                sim.server.add_unmask_response(node, responses[node])
            try:
                sim.server.result()
            except secagg.RoundAbortedError:
                finished = False
            else:
                finished = True
            assert predicted is finished, responders
    assert predicted and size == len(survivors)  # every survivor answering always finishes


def test_counts_are_summed_exactly_under_dropouts() -> None:
    """The integers mode a federated fit of the encoding uses (ticket/data/heart_counts.py):
    counts in 0..cap go into the masked sum as they are."""
    cap = 300
    sim = Simulation(
        nodes=(3, 4, 5, 6, 7), length=50, params=SecAggParams(clip=1.0, levels=cap + 1),
        count_cap=cap,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    for node in sim.nodes:
        sim.inputs[node] = rng.integers(0, cap + 1, 50).astype(np.float32)

    result = sim.run(Drops(before_mask=(6,)))

    assert result.survivors == (3, 4, 5, 7)
    exact = sum(sim.inputs[u].astype(np.int64) for u in result.survivors)
    np.testing.assert_array_equal(result.total.astype(np.int64), exact)


@pytest.mark.parametrize(
    ("inputs", "levels", "message"),
    [
        (np.full(5, 2.5), 11, "counts must be integers"),
        (np.full(5, -1.0), 11, r"counts must be in 0\.\.10"),
        (np.full(5, 11.0), 11, r"counts must be in 0\.\.10"),
        (np.full(5, 1.0), 10, "cannot hold counts up to 10"),
        (np.full(5, np.nan), 11, "counts must be integers"),
    ],
)
def test_a_node_refuses_counts_it_cannot_sum_exactly(
    inputs: np.ndarray, levels: int, message: str
) -> None:
    sim = Simulation(
        nodes=(1, 2, 3), length=5, params=SecAggParams(clip=1.0, levels=levels), count_cap=10
    )
    for node in sim.nodes:
        sim.inputs[node] = inputs
    with pytest.raises(MessageError, match=message):
        sim.run()
