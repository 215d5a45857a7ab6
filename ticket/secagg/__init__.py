"""Secure aggregation over the packed ticket vector: the server learns only the sum.

Pure protocol math (Bonawitz et al., CCS 2017; Bell et al., CCS 2020 "SecAgg+"): functions and
dataclasses over bytes and numpy arrays, no I/O, no Flower. server/ and edge_daemon/ carry the
bytes in Flower messages. Threat model: an honest-but-curious server and nodes, any of which
may drop at any time; the server must not learn any node's input, only the sum of at least a
threshold of nodes. Channels are TLS with node authentication (the deployment's job). The
server is not trusted to relay public keys faithfully: each node signs its key advert with its
identity key, the fleet key certifies each enrolled node's identity key, and a node checks
both for every neighbour before deriving a mask (identity.py), so an altered or invented key
ends in AuthenticationError, never a wrong sum.

Secrets per node u and round r, fresh every round and never reused: a cipher key pair
(c_sk, c_pk) that seals shares, a mask key pair (s_sk, s_pk), and a self-mask seed b_u
(32 bytes). The round's graph (graph.py) is derived from (run id, r, cohort): a complete graph
up to 8 nodes, else a Harary graph of even degree k = 2 * ceil(c * log2(n) / 2) (c = 2: k = 10
for n = 20, 14 for n = 100, 20 for n = 1000) on a pseudorandom ring. u's closed neighbourhood
N[u] (itself and its k neighbours) holds Shamir shares of b_u and s_sk_u with threshold
t_u = max(floor(m / 2) + 1, ceil(2m / 3)), m = |N[u]|. u uploads

    y_u = q_u + PRG(b_u) + sum_{v in N(u), v > u} PRG(s_uv) - sum_{v in N(u), v < u} PRG(s_uv)

mod R = 2^ceil(log2(n q)), bit-packed to ceil(log2(n q)) bits per value, where q_u is u's
clipped, stochastically rounded input (quantize.py) on the q levels of the KeyBundle's params
(fixed, or chosen by the server once the cohort is fixed: the fewest meeting a target error for
n devices, quantize.choose_quantization), s_uv = HKDF(X25519(s_sk_u, s_pk_v), run, r, {u, v},
"pairwise-mask"), and PRG is ChaCha20 under a full 256-bit seed (masking.py).

Message flow. Key material for round r + 1 rides on round r's messages, so a steady-state
round costs 2 message round trips:

    (A) server -> u: train instruction + MaskRequest(r: members M_r)     [plus model, glue's]
        u -> server: MaskedInput(r: y_u) + KeyAdvert(r + 1: c_pk, s_pk, commitment to b)
    (B) server -> u: UnmaskRequest(r: whose seed / mask key to reveal, sealed shares for u)
                     + KeyBundle(r + 1: params, cohort C_{r+1}, u's neighbours' public keys)
        u -> server: UnmaskResponse(r: shares) + ShareBundle(r + 1: u's shares of b_u and
                     s_sk_u, each neighbour's pair sealed to it with ChaCha20-Poly1305 under
                     HKDF(X25519(c_sk_u, c_pk_v), ..., "share-seal"), associated data binding
                     run, round, sender, recipient and kind)

C_{r+1} is the set of nodes whose KeyAdvert(r + 1) arrived in (A) of round r; M_{r+1} is the
subset whose ShareBundle(r + 1) arrived in (B) and whose neighbourhoods still hold a threshold
(graph.viable_subset). The first round is preceded by a setup exchange of the same two trips
(adverts, then bundles) with nothing to mask or unmask: 2 + 2R round trips for R rounds
(Bonawitz's protocol costs 4 per round). A node joining or returning mid-run answers (A) with
a KeyAdvert only, (B) with a ShareBundle only, and trains from the next round. Per steady-state
round a node does 2k + 2 X25519 operations, two Shamir splits, k seals and k + 1 PRG
expansions; the server does, per round, one PRG expansion per survivor, one per (dropped node,
surviving neighbour) pair, and one interpolation per needed secret: O(n log n).

Dropouts, each leaving the exact sum of the survivors S (the nodes whose y_u arrived), or a
RoundAbortedError, never a wrong sum:
- Before sending its ShareBundle: u is not a member; nobody masks with u.
- After its ShareBundle, before its y_u arrives (u in D = M_r - S): the server asks u's
  surviving neighbours for their shares of s_sk_u, rebuilds it (checked against s_pk_u),
  recomputes s_uv for every surviving neighbour v and removes those pairwise masks. u's round-r
  keys are burnt: a late y_u is refused by the server, and still hides behind PRG(b_u), whose
  shares nobody will reveal once they revealed s_sk_u's.
- After y_u arrived: u's neighbours reveal their shares of b_u (checked against u's commitment)
  and the server removes PRG(b_u). u need not answer (B) itself.
- Too few: when fewer than t_v of some needed secret's holders survive, when fewer than 2
  vectors arrive, or when rebuilt secrets fail their checks, the round raises
  RoundAbortedError and the caller keeps the global model unchanged. The glue always sets
  round timeouts: a step ends at its deadline with whatever arrived.

The reveal rule (node.reveal_shares): for any peer, a node reveals its share of b_peer (the
peer's vector is in the sum) OR of s_sk_peer (the peer dropped), never both, also across
repeated requests in a round (the persisted state remembers); never its own s_sk; never about
nodes outside its closed neighbourhood or the round's members; and only when at least t of its
share holders survived. Because t > m / 2, no server can gather a threshold of both kinds of
one node's shares from honest nodes, so it can never unmask a live device.

Replays and mix-ups: every message header binds run id, round, sender, recipient and kind, and
decoding checks them all (MessageError); sealed shares are authenticated with the same fields
(IntegrityError); HKDF contexts bind run, round and the node pair, so keys and masks of
another round are unrelated; the server refuses a second message of any kind from a node in a
round, and the node refuses to mask twice.
"""

from ticket.secagg.aggregator import AggregateResult, Phase, ServerRound
from ticket.secagg.bitpack import pack_bits, packed_size, unpack_bits
from ticket.secagg.errors import (
    AuthenticationError,
    MessageError,
    ParamsError,
    RevealRefusedError,
    RoundAbortedError,
    RoundStateError,
    SecAggError,
    ShareError,
)
from ticket.secagg.graph import closed_neighbourhood, neighbour_graph, viable_subset
from ticket.secagg.identity import Enrolled, PeerTrust, Roster, certify
from ticket.secagg.messages import SERVER, MessageKind, ShareKind
from ticket.secagg.node import (
    NodeRound,
    RoundSecrets,
    advertise_keys,
    distribute_shares,
    mask_input,
    reveal_shares,
)
from ticket.secagg.params import SecAggParams
from ticket.secagg.quantize import (
    QuantizationChoice,
    QuantizationError,
    choose_quantization,
    dequantize_mean,
    dequantize_sum,
    quantization_error,
    quantize,
)

__all__ = [
    "SERVER",
    "AggregateResult",
    "AuthenticationError",
    "Enrolled",
    "MessageError",
    "MessageKind",
    "NodeRound",
    "ParamsError",
    "PeerTrust",
    "Phase",
    "QuantizationChoice",
    "QuantizationError",
    "RevealRefusedError",
    "Roster",
    "RoundAbortedError",
    "RoundSecrets",
    "RoundStateError",
    "SecAggError",
    "SecAggParams",
    "ServerRound",
    "ShareError",
    "ShareKind",
    "advertise_keys",
    "certify",
    "choose_quantization",
    "closed_neighbourhood",
    "dequantize_mean",
    "dequantize_sum",
    "distribute_shares",
    "mask_input",
    "neighbour_graph",
    "pack_bits",
    "packed_size",
    "quantization_error",
    "quantize",
    "reveal_shares",
    "unpack_bits",
    "viable_subset",
]
