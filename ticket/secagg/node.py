"""The device's side of a round: advertise keys, share secrets, mask the update, reveal shares.

Each step is a function from (incoming message bytes, state) to (reply bytes, new state); the
caller persists the new state (NodeRound.to_bytes, file mode 0600: it holds secrets) BEFORE
sending the reply, so a restarted daemon never masks twice or contradicts an earlier reveal.
"""

import json
import os
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from ticket import crypto
from ticket.secagg import shamir
from ticket.secagg.bitpack import pack_bits
from ticket.secagg.errors import (
    MessageError,
    ParamsError,
    RevealRefusedError,
    RoundAbortedError,
    RoundStateError,
)
from ticket.secagg.graph import closed_neighbourhood, neighbour_graph
from ticket.secagg.identity import PeerTrust, advert_statement, check_peer
from ticket.secagg.masking import commit_seed, mask, pair_seeds
from ticket.secagg.messages import (
    SERVER,
    KeyAdvert,
    KeyBundle,
    MaskedInput,
    MaskRequest,
    MessageKind,
    PublicKeys,
    ShareBundle,
    ShareKind,
    SignedKeys,
    UnmaskRequest,
    UnmaskResponse,
    header,
    round_view,
)
from ticket.secagg.params import SecAggParams
from ticket.secagg.privacy import SkellamParams, privatize
from ticket.secagg.quantize import quantize
from ticket.secagg.shamir import Entropy

SHARE_SEAL_PURPOSE = "share-seal"
STATE_FORMAT = "ticketfleet-secagg-node-state/1"
SECRETS_FORMAT = "ticketfleet-secagg-round-secrets/1"


@dataclass(frozen=True)
class RoundSecrets:
    """A node's fresh secrets for one round; never reused for another round."""

    run_id: int
    round: int
    node_id: int
    cipher_secret: bytes  # X25519 private key that seals and opens shares
    mask_secret: bytes  # X25519 private key of the pairwise masks (shared: revealed if dropped)
    seed: bytes  # b_u, the self-mask seed (shared: revealed if the masked vector counts)

    def to_bytes(self) -> bytes:
        """Canonical JSON; holds secrets: store it with mode 0600, never log it."""
        document = {
            "format": SECRETS_FORMAT,
            "ids": [self.run_id, self.round, self.node_id],
            "keys": [self.cipher_secret.hex(), self.mask_secret.hex(), self.seed.hex()],
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("ascii")

    @classmethod
    def from_bytes(cls, data: bytes) -> "RoundSecrets":
        try:
            document = json.loads(data)
            if not isinstance(document, dict) or document.get("format") != SECRETS_FORMAT:
                raise MessageError(f"not a {SECRETS_FORMAT} document")
            if set(document) != {"format", "ids", "keys"}:
                raise MessageError("round secrets have missing or unknown fields")
            run_id, round, node = (_int(value) for value in document["ids"])
            cipher, mask_key, seed = (_hex(value, 32) for value in document["keys"])
        except (ValueError, TypeError) as error:
            raise MessageError(f"round secrets are malformed: {error}") from None
        return cls(run_id, round, node, cipher, mask_key, seed)

    def public_keys(self) -> PublicKeys:
        commitment = commit_seed(self.seed, run_id=self.run_id, round=self.round, node=self.node_id)
        return PublicKeys(
            crypto.x25519_public_key(self.cipher_secret),
            crypto.x25519_public_key(self.mask_secret),
            commitment,
        )


@dataclass(frozen=True)
class NodeRound:
    """A node's state for one round, from its share bundle to its reveal."""

    secrets: RoundSecrets
    params: SecAggParams
    cohort: tuple[int, ...]
    peers: tuple[tuple[int, PublicKeys], ...]  # neighbours and their keys, by id
    own_shares: tuple[bytes, bytes]  # this node's own share of (its seed, its mask key)
    members: tuple[int, ...] = ()  # set by mask_input: whose shares went out
    is_masked: bool = False
    revealed: tuple[tuple[int, ShareKind], ...] = ()  # every (owner, kind) revealed so far

    @property
    def holders(self) -> tuple[int, ...]:
        return tuple(sorted((self.secrets.node_id, *(node for node, _ in self.peers))))

    @property
    def threshold(self) -> int:
        return self.params.threshold(len(self.holders))

    def to_bytes(self) -> bytes:
        return _encode_state(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> "NodeRound":
        return _decode_state(data)


def advertise_keys(
    *,
    run_id: int,
    round: int,
    node_id: int,
    identity_key: bytes,
    entropy: Entropy = os.urandom,
) -> tuple[bytes, RoundSecrets]:
    """(KeyAdvert bytes, secrets to keep): fresh keys and self-mask seed for `round`, signed
    with `identity_key` (the node's P-384 private key, OpenSSH or PEM bytes; identity.py)."""
    secrets = RoundSecrets(run_id, round, node_id, entropy(32), entropy(32), entropy(32))
    identity = crypto.identity_public_key(identity_key)
    unsigned = SignedKeys(secrets.public_keys(), identity, bytes(crypto.IDENTITY_SIGNATURE_BYTES))
    statement = advert_statement(run_id, round, node_id, unsigned)
    signed = replace(unsigned, signature=crypto.identity_sign(identity_key, statement))
    return KeyAdvert(run_id, round, node_id, SERVER, signed).to_bytes(), secrets


def distribute_shares(
    bundle: bytes, secrets: RoundSecrets, *, trust: PeerTrust, entropy: Entropy = os.urandom
) -> tuple[bytes, NodeRound]:
    """(ShareBundle bytes, state): check every neighbour's signed keys against `trust`
    (AuthenticationError naming the first that fails: this node then sits the round out, so
    nobody masks with keys a server altered), then Shamir-share the seed and mask key over
    this node's closed neighbourhood and seal each neighbour's pair of shares to it."""
    me, run_id, round = secrets.node_id, secrets.run_id, secrets.round
    signed = KeyBundle.from_bytes(bundle, run_id=run_id, round=round, sender=SERVER, recipient=me)
    graph = neighbour_graph(signed.cohort, run_id=run_id, round=round, params=signed.params)
    if tuple(node for node, _ in signed.peers) != graph[me]:
        raise MessageError("key bundle's peers are not this node's neighbours in the round graph")
    if not signed.peers:
        raise RoundAbortedError("this node has no neighbours: its input would be revealed")
    for peer, peer_keys in signed.peers:
        check_peer(run_id, round, peer, peer_keys, trust)
    peers = tuple((peer, peer_keys.keys) for peer, peer_keys in signed.peers)
    holders = closed_neighbourhood(graph, me)
    threshold = signed.params.threshold(len(holders))
    seed_shares = shamir.split(secrets.seed, threshold, holders, entropy=entropy)
    key_shares = shamir.split(secrets.mask_secret, threshold, holders, entropy=entropy)
    sealed = tuple(
        (
            peer,
            crypto.aead_encrypt(
                _seal_key(secrets, peer, peer_keys),
                seed_shares[peer] + key_shares[peer],
                header(MessageKind.SEALED_SHARES, run_id, round, me, peer),
                nonce=entropy(crypto.AEAD_NONCE_BYTES),
            ),
        )
        for peer, peer_keys in peers
    )
    state = NodeRound(
        secrets, signed.params, signed.cohort, peers, (seed_shares[me], key_shares[me])
    )
    view = round_view(signed.params, signed.cohort)
    return ShareBundle(run_id, round, me, SERVER, view, sealed).to_bytes(), state


def mask_input(
    request: bytes,
    state: NodeRound,
    update: npt.ArrayLike,
    *,
    rng: np.random.Generator,
    dp: SkellamParams | None = None,
    noise_rng: np.random.Generator | None = None,
    count_cap: int | None = None,
) -> tuple[bytes, NodeRound]:
    """(MaskedInput bytes, state): quantise `update`, add the self mask and the pairwise masks
    of the neighbours among the request's members, bit-pack at ceil(log2(members * q)) bits.

    Under differential privacy (`dp`), the update is clipped, rounded to integers and noised
    (privacy.py's distributed Skellam, `noise_rng` the device's secret randomness) in place of
    the quantiser; the node first checks that the round's q holds what it will add. With
    `count_cap`, `update` holds counts (integers in 0..cap, e.g. a histogram of readings) that
    are masked as they are, so the server unmasks their exact sum; the round's q must exceed
    the cap."""
    s = state.secrets
    if state.is_masked or state.revealed:
        raise RoundStateError(
            f"round {s.round} is past masking on this node; a second masked vector under the "
            "same masks would reveal the difference of the two inputs"
        )
    ask = MaskRequest.from_bytes(
        request, run_id=s.run_id, round=s.round, sender=SERVER, recipient=s.node_id
    )
    if not set(ask.members) <= set(state.cohort):
        raise MessageError("mask request names members outside the round's cohort")
    values = np.asarray(update)
    if values.shape != (ask.length,):
        raise MessageError(f"mask request is for {ask.length} values, the update has {values.size}")
    live = [(peer, keys) for peer, keys in state.peers if peer in set(ask.members)]
    if len(live) + 1 < state.threshold:
        raise RoundAbortedError(
            f"only {len(live)} of this node's {len(state.peers)} neighbours hold its shares; "
            f"{state.threshold - 1} are needed"
        )
    bits = state.params.modulus_bits(len(ask.members))
    publics = {peer: keys.mask_key for peer, keys in live}
    seeds = pair_seeds(s.mask_secret, publics, run_id=s.run_id, round=s.round, me=s.node_id)
    if count_cap is not None:
        levels = _counts(values, count_cap, state.params.levels)
    elif dp is None:
        levels = quantize(values, state.params, rng)  # [k] in 0..q-1
    else:
        if noise_rng is None:
            raise ParamsError("differential privacy needs the device's own noise randomness")
        needed = dp.levels(ask.length)
        if state.params.levels < needed:
            raise MessageError(
                f"the round's {state.params.levels} levels cannot hold this device's DP values "
                f"({needed} needed): the sum would wrap around"
            )
        levels = privatize(values, dp, bits=bits, rounding_rng=rng, noise_rng=noise_rng)
    masked = mask(levels, s.seed, seeds, s.node_id, bits)  # [k] mod 2^bits
    reply = MaskedInput(
        s.run_id, s.round, s.node_id, SERVER, bits, ask.length, pack_bits(masked, bits)
    )
    return reply.to_bytes(), replace(state, members=ask.members, is_masked=True)


def _counts(values: npt.NDArray[Any], cap: int, levels: int) -> npt.NDArray[np.uint32]:
    """uint32 [k]: counts masked as they are; MessageError for anything but integers in
    0..cap, or a round whose levels could not hold the cap (the sum would wrap around)."""
    if not 0 <= cap < levels:
        raise MessageError(f"the round's {levels} levels cannot hold counts up to {cap}")
    if not np.all(np.isfinite(values)) or not np.array_equal(values, np.round(values)):
        raise MessageError("counts must be integers")
    if values.size and (values.min() < 0 or values.max() > cap):
        raise MessageError(f"counts must be in 0..{cap}")
    return values.astype(np.uint32)


def reveal_shares(request: bytes, state: NodeRound) -> tuple[bytes, NodeRound]:
    """(UnmaskResponse bytes, state): for each owner asked about, this node's share of its seed
    (its masked vector counts) OR of its mask key (it dropped), never both.

    Refused with RevealRefusedError: a request before this node masked; an owner outside its
    neighbourhood or the round's members; one owner in both lists, or asked the other way
    than in an earlier request this round; this node's own mask key (it is alive); fewer
    surviving share holders than the threshold.
    """
    s = state.secrets
    ask = UnmaskRequest.from_bytes(
        request, run_id=s.run_id, round=s.round, sender=SERVER, recipient=s.node_id
    )
    wanted = _check_reveal(ask, state)
    opened = _open_sealed(ask, state, wanted)
    entries = []
    for owner, kind in sorted(wanted.items()):
        seed_share, key_share = state.own_shares if owner == s.node_id else opened[owner]
        entries.append((owner, kind, seed_share if kind is ShareKind.SEED else key_share))
    reply = UnmaskResponse(s.run_id, s.round, s.node_id, SERVER, tuple(entries))
    revealed = tuple(sorted(set(state.revealed) | set(wanted.items())))
    return reply.to_bytes(), replace(state, revealed=revealed)


def _check_reveal(ask: UnmaskRequest, state: NodeRound) -> dict[int, ShareKind]:
    me = state.secrets.node_id
    if not state.is_masked:
        raise RevealRefusedError("this node sent no masked vector this round; nothing to unmask")
    seeds, keys = set(ask.reveal_seed_of), set(ask.reveal_key_of)
    both = seeds & keys
    if both:
        raise RevealRefusedError(f"asked for both the seed and the mask key of node {min(both)}")
    allowed = set(state.holders) & set(state.members)
    if not (seeds | keys) <= allowed:
        outside = min((seeds | keys) - allowed)
        raise RevealRefusedError(f"asked about node {outside}, outside this node's neighbourhood")
    if me in keys:
        raise RevealRefusedError("asked for this node's own mask key, but this node is alive")
    wanted = {owner: ShareKind.SEED for owner in seeds} | {o: ShareKind.MASK_KEY for o in keys}
    for owner, kind in state.revealed:
        if wanted.get(owner, kind) != kind:
            raise RevealRefusedError(
                f"node {owner}'s {kind.name.lower()} share was revealed earlier this round; "
                "revealing the other one too would unmask it"
            )
    if len(seeds) < state.threshold:
        raise RevealRefusedError(
            f"only {len(seeds)} of this node's share holders count, below the threshold "
            f"{state.threshold}"
        )
    return wanted


def _open_sealed(
    ask: UnmaskRequest, state: NodeRound, wanted: dict[int, ShareKind]
) -> dict[int, tuple[bytes, bytes]]:
    s = state.secrets
    senders = [node for node, _ in ask.sealed]
    if senders != sorted(set(wanted) - {s.node_id}):
        raise MessageError("unmask request's sealed shares do not match the owners asked about")
    peer_keys = dict(state.peers)
    opened = {}
    for peer, blob in ask.sealed:
        associated = header(MessageKind.SEALED_SHARES, s.run_id, s.round, peer, s.node_id)
        plain = crypto.aead_decrypt(_seal_key(s, peer, peer_keys[peer]), blob, associated)
        pair = (plain[: shamir.SHARE_BYTES], plain[shamir.SHARE_BYTES :])
        if any(shamir.share_holder(share) != s.node_id for share in pair):
            raise MessageError(f"node {peer} sealed shares made out to another holder")
        opened[peer] = pair
    return opened


def _seal_key(secrets: RoundSecrets, peer: int, peer_keys: PublicKeys) -> bytes:
    return crypto.derive_pair_key(
        secrets.cipher_secret,
        peer_keys.cipher_key,
        run_id=secrets.run_id,
        round=secrets.round,
        node_a=secrets.node_id,
        node_b=peer,
        purpose=SHARE_SEAL_PURPOSE,
    )


# ---------------------------------------------------------------- state on disk (canonical JSON)


def _encode_state(state: NodeRound) -> bytes:
    s, p = state.secrets, state.params
    document = {
        "format": STATE_FORMAT,
        "secrets": [
            s.run_id,
            s.round,
            s.node_id,
            s.cipher_secret.hex(),
            s.mask_secret.hex(),
            s.seed.hex(),
        ],
        "params": p.to_bytes().hex(),
        "cohort": list(state.cohort),
        "peers": [[node, keys.to_bytes().hex()] for node, keys in state.peers],
        "own_shares": [share.hex() for share in state.own_shares],
        "members": list(state.members),
        "is_masked": state.is_masked,
        "revealed": [[owner, int(kind)] for owner, kind in state.revealed],
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("ascii")


def _decode_state(data: bytes) -> NodeRound:
    try:
        document = json.loads(data)
        if not isinstance(document, dict) or document.get("format") != STATE_FORMAT:
            raise MessageError(f"not a {STATE_FORMAT} document")
        expected = {
            "format",
            "secrets",
            "params",
            "cohort",
            "peers",
            "own_shares",
            "members",
            "is_masked",
            "revealed",
        }
        if set(document) != expected:
            raise MessageError("node state has missing or unknown fields")
        run_id, round, node, cipher, mask_key, seed = document["secrets"]
        secrets = RoundSecrets(
            run_id, round, node, _hex(cipher, 32), _hex(mask_key, 32), _hex(seed, 32)
        )
        peers = tuple((_int(node), _public_keys(keys)) for node, keys in document["peers"])
        seed_share, key_share = (
            _hex(share, shamir.SHARE_BYTES) for share in document["own_shares"]
        )
        if not isinstance(document["is_masked"], bool):
            raise MessageError("is_masked must be a boolean")
        return NodeRound(
            secrets,
            SecAggParams.from_bytes(bytes.fromhex(document["params"])),
            tuple(_int(n) for n in document["cohort"]),
            peers,
            (seed_share, key_share),
            tuple(_int(n) for n in document["members"]),
            document["is_masked"],
            tuple((_int(o), ShareKind(k)) for o, k in document["revealed"]),
        )
    except (ValueError, TypeError, KeyError) as error:
        raise MessageError(f"node state is malformed: {error}") from None


def _hex(value: Any, size: int) -> bytes:
    raw = bytes.fromhex(value)
    if len(raw) != size:
        raise MessageError(f"node state holds a {len(raw)}-byte field where {size} belong")
    return raw


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MessageError("node state holds a non-integer id")
    return value


def _public_keys(value: Any) -> PublicKeys:
    raw = _hex(value, 96)
    return PublicKeys(raw[:32], raw[32:64], raw[64:])
