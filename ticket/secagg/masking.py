"""Masks as arithmetic mod R = 2^bits: the ChaCha20 PRG, pairwise seeds, and a node's mask.

masked_u = x_u + PRG(b_u) + sum_{v in N(u), v > u} PRG(s_uv) - sum_{v in N(u), v < u} PRG(s_uv)
(mod R). Over a set of nodes that includes both ends of every pair, the pairwise terms cancel;
the self masks PRG(b_u) come off once the b_u are reconstructed. All arithmetic is uint32,
which wraps mod 2^32 and so mod R for every R dividing 2^32.
"""

import struct
from collections.abc import Mapping

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


def pair_seed(
    my_secret: bytes, peer_public: bytes, *, run_id: int, round: int, me: int, peer: int
) -> bytes:
    """s_uv: the 32-byte pairwise mask seed of nodes `me` and `peer` for one round (either end,
    or the server once it holds either end's reconstructed mask key, derives the same)."""
    return crypto.derive_pair_key(
        my_secret,
        peer_public,
        run_id=run_id,
        round=round,
        node_a=me,
        node_b=peer,
        purpose=PAIR_MASK_PURPOSE,
    )


def mask(
    levels: Words, self_seed: bytes, pair_seeds: Mapping[int, bytes], me: int, bits: int
) -> Words:
    """uint32 [k]: `levels` plus the self mask and the signed pairwise masks, mod 2^bits.

    `pair_seeds` maps each live neighbour to s_uv; a neighbour above `me` adds, below
    subtracts.
    """
    count = levels.size
    total = levels.astype(np.uint32) + prg(self_seed, count, bits)  # [k], wraps mod 2^32
    for peer, seed in pair_seeds.items():
        if peer > me:
            total += prg(seed, count, bits)
        else:
            total -= prg(seed, count, bits)
    total &= np.uint32((1 << bits) - 1)
    return total


def pair_sign(owner: int, peer: int) -> int:
    """+1 if `owner` added PRG(s_{owner,peer}) to its masked vector, -1 if it subtracted it."""
    return 1 if peer > owner else -1


def commit_seed(seed: bytes, *, run_id: int, round: int, node: int) -> bytes:
    """The commitment to b_u a node advertises, so the server can check a reconstructed seed."""
    context = SEED_COMMITMENT_DOMAIN + struct.pack("<QIQ", run_id, round, node)
    return crypto.hash_commitment(seed, context)
