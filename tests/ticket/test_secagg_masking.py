"""Masks: the summed PRG equals adding and subtracting each mask in turn, and a node's pairwise
masks cancel against its neighbours' over the whole cohort."""

import numpy as np
import pytest

from ticket import crypto
from ticket.secagg.masking import mask, pair_seed, pair_seeds, pair_sign, prg, prg_sum


def _seed(i: int) -> bytes:
    return bytes([i]) * 32


@pytest.mark.parametrize("bits", [1, 13, 24, 32])
def test_prg_sum_is_the_signed_sum_of_each_prg(bits: int) -> None:
    terms = [(1, _seed(1)), (-1, _seed(2)), (-1, _seed(3)), (1, _seed(4)), (1, _seed(1))]
    count = 1003

    expected = np.zeros(count, np.int64)
    for sign, seed in terms:
        expected += sign * prg(seed, count, bits).astype(np.int64)

    got = prg_sum(terms, count, bits)

    assert got.dtype == np.uint32
    np.testing.assert_array_equal(got, expected % 2**bits)
    np.testing.assert_array_equal(prg_sum([], count, bits), np.zeros(count, np.uint32))


def test_a_nodes_pairwise_masks_cancel_over_the_cohort() -> None:
    nodes = (4, 9, 2**63 + 1)
    keys = {node: crypto.generate_x25519_key_pair() for node in nodes}
    bits, count = 20, 77
    zero = np.zeros(count, np.uint32)
    total = np.zeros(count, np.uint32)
    for me in nodes:
        publics = {peer: keys[peer][1] for peer in nodes if peer != me}
        seeds = pair_seeds(keys[me][0], publics, run_id=1, round=2, me=me)
        for peer, public in publics.items():
            single = pair_seed(keys[me][0], public, run_id=1, round=2, me=me, peer=peer)
            assert seeds[peer] == single
        total += mask(zero, _seed(me % 256), seeds, me, bits)
    total &= np.uint32(2**bits - 1)

    self_masks = prg_sum([(1, _seed(me % 256)) for me in nodes], count, bits)
    np.testing.assert_array_equal(total, self_masks)
    assert pair_sign(4, 9) == 1 and pair_sign(9, 4) == -1
