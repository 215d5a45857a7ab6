"""The server's side of a round: a state machine over the nodes' messages, ending in the exact
sum of the surviving nodes' quantised vectors, or RoundAbortedError.

Phases, each closed by the call that emits the next batch of messages:
ADVERTISE (add_advert) -> key_bundles() -> SHARE (add_share_bundle) -> mask_requests()
-> MASK (add_masked_input) -> unmask_requests() -> UNMASK (add_unmask_response) -> result().
An add_* call that raises (MessageError, RoundStateError, IntegrityError, AuthenticationError)
leaves the round as it was: the glue logs it and goes on without that node's message.
"""

from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import Enum
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from ticket import crypto
from ticket.errors import CodecError
from ticket.secagg import shamir
from ticket.secagg.bitpack import unpack_bits
from ticket.secagg.errors import (
    MessageError,
    ParamsError,
    RoundAbortedError,
    RoundStateError,
    ShareError,
)
from ticket.secagg.graph import Graph, closed_neighbourhood, neighbour_graph, viable_subset
from ticket.secagg.identity import Roster, check_advert, check_enrolled
from ticket.secagg.masking import commit_seed, pair_seeds, pair_sign, prg_sum
from ticket.secagg.messages import (
    SERVER,
    KeyAdvert,
    KeyBundle,
    MaskedInput,
    MaskRequest,
    Message,
    PublicKeys,
    ShareBundle,
    ShareKind,
    SignedKeys,
    UnmaskRequest,
    UnmaskResponse,
    round_view,
)
from ticket.secagg.params import SecAggParams
from ticket.secagg.quantize import choose_quantization, dequantize_mean, dequantize_sum

Words = npt.NDArray[np.uint32]
_Shares = dict[tuple[int, ShareKind], list[bytes]]  # (owner, kind) -> revealed shares
_In = TypeVar("_In", bound=Message)  # a node -> server message class


class Phase(Enum):
    ADVERTISE = "advertise"
    SHARE = "share"
    MASK = "mask"
    UNMASK = "unmask"
    DONE = "done"


@dataclass(frozen=True, eq=False)
class AggregateResult:
    total: Words  # uint32 [k]: the exact sum of the survivors' quantised levels (< 2^bits)
    survivors: tuple[int, ...]  # whose vectors are in the sum
    bits: int
    params: SecAggParams

    def sum(self) -> npt.NDArray[np.float32]:
        return dequantize_sum(self.total, len(self.survivors), self.params)

    def mean(self) -> npt.NDArray[np.float32]:
        return dequantize_mean(self.total, len(self.survivors), self.params)


class ServerRound:
    """One round of secure aggregation on the server (pure: messages in, messages out)."""

    def __init__(
        self,
        *,
        run_id: int,
        round: int,
        params: SecAggParams,
        length: int,
        min_survivors: int = 2,
        roster: Roster | None = None,
        target_error: float | None = None,
    ) -> None:
        """`roster`: every enrolled node's certified identity key (identity.py); with one, an
        advert from a node outside it or signed by another key is refused, and each key bundle
        carries the certificates the nodes check. None: a development fleet with no enrolment
        (the nodes must allow uncertified neighbours); advert signatures are checked still.

        `target_error`: once the cohort is fixed (key_bundles), the levels are the fewest that
        meet this RMS error of the mean, as a fraction of the clip (quantize.py's
        choose_quantization), in place of `params.levels`; the key bundles carry them."""
        if min_survivors < 2:
            raise ValueError("a sum over fewer than 2 nodes would reveal a node's input")
        self.run_id, self.round, self.params, self.length = run_id, round, params, length
        self.min_survivors = min_survivors
        self.target_error = target_error
        self.roster = roster
        self.phase = Phase.ADVERTISE
        self.keys: dict[int, PublicKeys] = {}
        self.signed: dict[int, SignedKeys] = {}  # as relayed: signature and certificate
        self.graph: Graph = {}
        self.sealed: dict[int, dict[int, bytes]] = {}  # sender -> recipient -> sealed shares
        self.members: tuple[int, ...] = ()
        self.bits = 0
        self.total: Words = np.zeros(0, np.uint32)
        self.survivors: set[int] = set()
        self.asked: dict[int, dict[int, ShareKind]] = {}  # responder -> owner -> kind asked
        self.revealed: dict[int, dict[int, bytes]] = {}  # responder -> owner -> share

    # ------------------------------------------------------------ advertise -> share

    def add_advert(self, node: int, data: bytes) -> None:
        self._expect(Phase.ADVERTISE)
        advert = self._read(KeyAdvert, data, node)
        if node in self.keys:
            raise RoundStateError(f"node {node} already advertised keys for round {self.round}")
        # Refused here, an altered advert leaves its node out of the cohort: nobody masks
        # with it, and the sum is the others'. The nodes check again (they trust no server).
        check_advert(self.run_id, self.round, node, advert.signed)
        signed = advert.signed
        if self.roster is not None:
            entry = check_enrolled(node, signed.identity, self.roster)
            signed = replace(signed, certificate=entry.certificate)
        self.keys[node] = advert.keys
        self.signed[node] = signed

    def key_bundles(self) -> dict[int, bytes]:
        """{node: KeyBundle bytes} for every advertiser; the cohort is now fixed."""
        self._expect(Phase.ADVERTISE)
        cohort = tuple(sorted(self.keys))
        if len(cohort) < self.min_survivors:
            raise RoundAbortedError(
                f"{len(cohort)} node(s) advertised keys; need {self.min_survivors}"
            )
        if self.target_error is not None:
            levels = self._levels_for(len(cohort), self.target_error)
            self.params = replace(self.params, levels=levels)
        self.params.modulus_bits(len(cohort))  # fail now, not at masking, if n * q is too big
        self.graph = neighbour_graph(
            cohort, run_id=self.run_id, round=self.round, params=self.params
        )
        self.phase = Phase.SHARE
        return {
            node: KeyBundle(
                self.run_id,
                self.round,
                SERVER,
                node,
                self.params,
                cohort,
                tuple((peer, self.signed[peer]) for peer in self.graph[node]),
            ).to_bytes()
            for node in cohort
        }

    # ------------------------------------------------------------ share -> mask

    def add_share_bundle(self, node: int, data: bytes) -> None:
        self._expect(Phase.SHARE)
        if node not in self.graph:
            raise MessageError(f"node {node} is not in round {self.round}'s cohort")
        bundle = self._read(ShareBundle, data, node)
        if node in self.sealed:
            raise RoundStateError(f"node {node} already sent its shares for round {self.round}")
        if tuple(peer for peer, _ in bundle.sealed) != self.graph[node]:
            raise MessageError(f"node {node}'s shares are not addressed to its neighbours")
        if bundle.view != round_view(self.params, sorted(self.graph)):
            # Its key bundle was altered on the way: it would quantise or mask under other
            # parameters than the ones the sum is read with. Not a member, so not in the sum.
            raise MessageError(
                f"node {node} took other parameters or another cohort from its key bundle"
            )
        self.sealed[node] = dict(bundle.sealed)

    def mask_requests(self) -> dict[int, bytes]:
        """{node: MaskRequest bytes} for the members: the senders of shares in which every node
        keeps a threshold of its share holders. Raises RoundAbortedError if too few remain."""
        self._expect(Phase.SHARE)
        self.members = viable_subset(self.graph, self.sealed, self.params)
        if len(self.members) < self.min_survivors:
            raise RoundAbortedError(f"only {len(self.members)} node(s) can be unmasked this round")
        self.bits = self.params.modulus_bits(len(self.members))
        self.total = np.zeros(self.length, np.uint32)
        self.phase = Phase.MASK
        return {
            node: MaskRequest(
                self.run_id, self.round, SERVER, node, self.length, self.members
            ).to_bytes()
            for node in self.members
        }

    # ------------------------------------------------------------ mask -> unmask

    def add_masked_input(self, node: int, data: bytes) -> None:
        self._expect(Phase.MASK)
        if node not in self.members:
            raise MessageError(f"node {node} is not a member of round {self.round}")
        masked = self._read(MaskedInput, data, node)
        if node in self.survivors:
            raise RoundStateError(
                f"node {node} already sent a masked vector for round {self.round}"
            )
        if (masked.bits, masked.length) != (self.bits, self.length):
            raise MessageError(
                f"masked vector is {masked.length} values of {masked.bits} bits, expected "
                f"{self.length} of {self.bits}"
            )
        try:
            values = unpack_bits(masked.payload, self.bits, self.length)  # [k]
        except CodecError as error:
            raise MessageError(str(error)) from None
        self.total += values  # wraps mod 2^32; reduced mod 2^bits at the end
        self.survivors.add(node)

    def unmask_requests(self) -> dict[int, bytes]:
        """{node: UnmaskRequest bytes} for the survivors; late masked vectors are refused from
        here on. Raises RoundAbortedError when some needed secret could never be rebuilt."""
        self._expect(Phase.MASK)
        survivors = set(self.survivors)
        dropped = set(self.members) - survivors
        if len(survivors) < self.min_survivors:
            self.phase = Phase.DONE
            raise RoundAbortedError(
                f"{len(survivors)} masked vector(s) arrived; need {self.min_survivors}"
            )
        owners = sorted(survivors | {v for v in dropped if survivors.intersection(self.graph[v])})
        for owner in owners:
            count = len(survivors.intersection(closed_neighbourhood(self.graph, owner)))
            if count < self._threshold(owner):
                self.phase = Phase.DONE
                raise RoundAbortedError(
                    f"node {owner}'s secrets have {count} surviving share holders; "
                    f"{self._threshold(owner)} are needed"
                )
        self.phase = Phase.UNMASK
        requests = {}
        for node in sorted(survivors):
            holders = closed_neighbourhood(self.graph, node)
            seeds = tuple(v for v in holders if v in survivors)
            keys = tuple(v for v in holders if v in dropped)
            self.asked[node] = {v: ShareKind.SEED for v in seeds} | {
                v: ShareKind.MASK_KEY for v in keys
            }
            sealed = tuple((v, self.sealed[v][node]) for v in sorted(set(seeds + keys) - {node}))
            requests[node] = UnmaskRequest(
                self.run_id, self.round, SERVER, node, seeds, keys, sealed
            ).to_bytes()
        return requests

    def can_rebuild(self, responders: Iterable[int]) -> bool:
        """Whether unmask responses from `responders` would hold a threshold of shares of
        every secret `result` needs (phase UNMASK): how long an unmask trip must wait."""
        self._expect(Phase.UNMASK)
        answered = set(responders) & set(self.asked)
        needed: dict[int, int] = {}  # owner -> share holders among the responders
        for responder in self.asked:
            for owner in self.asked[responder]:
                needed.setdefault(owner, 0)
                if responder in answered:
                    needed[owner] += 1
        return all(count >= self._threshold(owner) for owner, count in needed.items())

    # ------------------------------------------------------------ unmask -> result

    def add_unmask_response(self, node: int, data: bytes) -> None:
        self._expect(Phase.UNMASK)
        if node not in self.asked:
            raise MessageError(f"node {node} was not asked to unmask round {self.round}")
        response = self._read(UnmaskResponse, data, node)
        if node in self.revealed:
            raise RoundStateError(f"node {node} already answered for round {self.round}")
        got = {owner: kind for owner, kind, _ in response.shares}
        if got != self.asked[node]:
            raise MessageError(f"node {node}'s revealed shares are not the ones asked for")
        if any(shamir.share_holder(share) != node for _, _, share in response.shares):
            raise MessageError(f"node {node} revealed shares made out to another holder")
        self.revealed[node] = {owner: share for owner, _, share in response.shares}

    def result(self) -> AggregateResult:
        """The survivors' exact sum; RoundAbortedError if any needed secret cannot be rebuilt
        and checked (against its commitment or public key) from the shares received."""
        self._expect(Phase.UNMASK)
        self.phase = Phase.DONE
        survivors = sorted(self.survivors)
        dropped = [v for v in self.members if v not in self.survivors]
        shares = self._shares_by_owner()
        masks: list[tuple[int, bytes]] = []  # (sign, seed) of every mask still in the total
        for u in survivors:
            masks.append((-1, self._rebuild_seed(u, shares)))  # u added PRG(b_u): take it off
        for v in dropped:
            live = [u for u in self.graph[v] if u in self.survivors]
            if not live:
                continue
            secret = self._rebuild_mask_key(v, shares)
            publics = {u: self.keys[u].mask_key for u in live}
            seeds = pair_seeds(secret, publics, run_id=self.run_id, round=self.round, me=v)
            # u added sign * PRG(s_uv), sign = pair_sign(u, v): take it off
            masks += [(-pair_sign(u, v), seeds[u]) for u in live]
        total = self.total + prg_sum(masks, self.length, self.bits)  # [k], wraps mod 2^32
        total &= np.uint32((1 << self.bits) - 1)
        return AggregateResult(total, tuple(survivors), self.bits, self.params)

    # ------------------------------------------------------------ helpers

    def _rebuild_seed(self, owner: int, shares: _Shares) -> bytes:
        seed = self._combine(owner, ShareKind.SEED, shares)
        expected = commit_seed(seed, run_id=self.run_id, round=self.round, node=owner)
        if expected != self.keys[owner].seed_commitment:
            raise RoundAbortedError(f"node {owner}'s rebuilt seed does not match its commitment")
        return seed

    def _rebuild_mask_key(self, owner: int, shares: _Shares) -> bytes:
        secret = self._combine(owner, ShareKind.MASK_KEY, shares)
        if crypto.x25519_public_key(secret) != self.keys[owner].mask_key:
            raise RoundAbortedError(
                f"node {owner}'s rebuilt mask key does not match its public key"
            )
        return secret

    def _shares_by_owner(self) -> _Shares:
        """(owner, kind) -> the shares of that secret the responders revealed."""
        shares: _Shares = {}
        for responder, revealed in self.revealed.items():
            for owner, share in revealed.items():
                shares.setdefault((owner, self.asked[responder][owner]), []).append(share)
        return shares

    def _combine(self, owner: int, kind: ShareKind, shares: _Shares) -> bytes:
        try:
            return shamir.combine(shares.get((owner, kind), []), self._threshold(owner))
        except ShareError as error:
            raise RoundAbortedError(
                f"cannot rebuild node {owner}'s {kind.name.lower()}: {error}"
            ) from None

    def _levels_for(self, cohort_size: int, target_error: float) -> int:
        try:
            choice = choose_quantization(
                cohort_size, clip=self.params.clip, length=self.length, target_error=target_error
            )
        except ParamsError as error:
            raise RoundAbortedError(f"no quantisation fits this round: {error}") from None
        return choice.levels

    def _threshold(self, owner: int) -> int:
        return self.params.threshold(len(self.graph[owner]) + 1)

    def _expect(self, phase: Phase) -> None:
        if self.phase is not phase:
            raise RoundStateError(
                f"round {self.round} is in phase {self.phase.value}; this step needs {phase.value}"
            )

    def _read(self, cls: type[_In], data: bytes, node: int) -> _In:
        return cls.from_bytes(
            data, run_id=self.run_id, round=self.round, sender=node, recipient=SERVER
        )
