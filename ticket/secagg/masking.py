"""Masks as arithmetic mod R = 2^bits: the ChaCha20 PRG, pairwise seeds, and a node's mask.

masked_u = x_u + PRG(b_u) + sum_{v in N(u), v > u} PRG(s_uv) - sum_{v in N(u), v < u} PRG(s_uv)
(mod R). Over a set of nodes that includes both ends of every pair, the pairwise terms cancel;
the self masks PRG(b_u) come off once the b_u are reconstructed. All arithmetic is uint32,
which wraps mod 2^32 and so mod R for every R dividing 2^32.
"""

import struct
from collections.abc import Iterable, Mapping

import numpy as np
import numpy.typing as npt

from ticket import crypto

PAIR_MASK_PURPOSE = "pairwise-mask"
SEED_COMMITMENT_DOMAIN = b"ticketfleet/secagg/v1/seed-commitment\x00"

Words = npt.NDArray[np.uint32]


def prg(seed: bytes, count: int, bits: int) -> Words:
    """uint32 [count], uniform mod 2^bits: the low bits of the ChaCha20 keystream under `seed`
    read as little-endian uint32 (a power-of-two modulus makes that exactly uniform)."""
    stream = crypto.chacha20_keystream(seed, 4 * count)
    words = np.frombuffer(stream, dtype="<u4").astype(np.uint32)  # [count], a writable copy
    words &= np.uint32((1 << bits) - 1)
    return words


def prg_sum(terms: Iterable[tuple[int, bytes]], count: int, bits: int) -> Words:
    """uint32 [count]: sum of sign * PRG(seed) over (sign, seed) in `terms`, mod 2^bits.

    Equal to adding and subtracting prg() one seed at a time, but each keystream is written
    straight into one reused buffer and reduced once at the end (the server removes a
    thousand masks a round: no per-mask allocation, copy or reduction)."""
    total = np.zeros(count, np.uint32)  # [count], wraps mod 2^32
    stream = np.empty(count, "<u4")  # [count], the keystream read as little-endian words
    for sign, seed in terms:
        crypto.chacha20_keystream_into(seed, stream.data.cast("B"))
        if sign > 0:
            total += stream
        else:
            total -= stream
    total &= np.uint32((1 << bits) - 1)
    return total


def pair_seed(
    my_secret: bytes, peer_public: bytes, *, run_id: int, round: int, me: int, peer: int
) -> bytes:
    """s_uv: the 32-byte pairwise mask seed of nodes `me` and `peer` for one round (either end,
    or the server once it holds either end's reconstructed mask key, derives the same)."""
    return pair_seeds(my_secret, {peer: peer_public}, run_id=run_id, round=round, me=me)[peer]


def pair_seeds(
    my_secret: bytes, peers: Mapping[int, bytes], *, run_id: int, round: int, me: int
) -> dict[int, bytes]:
    """{peer: pair_seed(my_secret, public, ..., peer=peer)} for every (peer, public) in
    `peers`: one node's seeds with many peers, its secret key loaded once."""
    return crypto.derive_pair_keys(
        my_secret, peers, run_id=run_id, round=round, me=me, purpose=PAIR_MASK_PURPOSE
    )


def mask(
    levels: Words, self_seed: bytes, pair_seeds: Mapping[int, bytes], me: int, bits: int
) -> Words:
    """uint32 [k]: `levels` plus the self mask and the signed pairwise masks, mod 2^bits.

    `pair_seeds` maps each live neighbour to s_uv; a neighbour above `me` adds, below
    subtracts.
    """
    masks = [(1, self_seed)] + [(pair_sign(me, peer), seed) for peer, seed in pair_seeds.items()]
    total = levels.astype(np.uint32) + prg_sum(masks, levels.size, bits)  # [k], mod 2^32
    total &= np.uint32((1 << bits) - 1)
    return total


def pair_sign(owner: int, peer: int) -> int:
    """+1 if `owner` added PRG(s_{owner,peer}) to its masked vector, -1 if it subtracted it."""
    return 1 if peer > owner else -1


def commit_seed(seed: bytes, *, run_id: int, round: int, node: int) -> bytes:
    """The commitment to b_u a node advertises, so the server can check a reconstructed seed."""
    context = SEED_COMMITMENT_DOMAIN + struct.pack("<QIQ", run_id, round, node)
    return crypto.hash_commitment(seed, context)
