"""Shamir secret sharing: any t shares rebuild, fewer say nothing, bad shares are caught."""

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.ticket.secagg_sim import entropy
from ticket.secagg import ShareError, shamir


@settings(max_examples=40, deadline=None)
@given(
    secret=st.binary(min_size=1, max_size=64),
    holders=st.sets(st.integers(1, 2**64 - 1), min_size=1, max_size=9),
    data=st.data(),
)
def test_any_threshold_of_shares_rebuilds_the_secret(
    secret: bytes, holders: set[int], data: st.DataObject
) -> None:
    threshold = data.draw(st.integers(1, len(holders)))
    shares = shamir.split(secret, threshold, holders)
    chosen = data.draw(st.sets(st.sampled_from(sorted(holders)), min_size=threshold))

    assert shamir.combine([shares[x] for x in chosen], threshold) == secret
    assert all(shamir.share_holder(shares[x]) == x for x in holders)
    assert all(len(share) == shamir.SHARE_BYTES for share in shares.values())


def test_every_subset_of_size_t_agrees() -> None:
    secret = bytes(range(32))
    shares = shamir.split(secret, 3, range(1, 7), entropy=entropy(1))
    for subset in itertools.combinations(shares.values(), 3):
        assert shamir.combine(subset, 3) == secret


def test_fewer_than_t_shares_fit_every_secret_equally() -> None:
    # t - 1 shares of A, plus any chosen secret B at x = 0, fix one polynomial of degree t - 1:
    # the shares are consistent with B exactly as with A, so they say nothing about which.
    threshold = 3
    shares = shamir.split(b"A" * 32, threshold, [1, 2, 3, 4], entropy=entropy(2))
    known = [(x, int.from_bytes(shares[x][10:], "big")) for x in (1, 2)]
    for other in (b"B" * 32, bytes(32), b"\xff" * 32):
        points = [(0, int.from_bytes(other, "big")), *known]
        forged_y = shamir._interpolate(points, 3)
        forged = shares[3][:10] + forged_y.to_bytes(66, "big")
        assert shamir.combine([shares[1], shares[2], forged], threshold) == other


def test_too_few_shares_are_refused() -> None:
    shares = shamir.split(b"secret", 3, [1, 2, 3])
    with pytest.raises(ShareError, match="need 3 shares, got 2"):
        shamir.combine([shares[1], shares[2]], 3)


def test_duplicate_shares_are_refused() -> None:
    shares = shamir.split(b"secret", 2, [1, 2, 3])
    with pytest.raises(ShareError, match="two shares for holder 1"):
        shamir.combine([shares[1], shares[1], shares[2]], 2)


def test_a_wrong_share_is_caught_when_there_is_a_spare() -> None:
    shares = shamir.split(b"s" * 32, 2, [1, 2, 3])
    wrong = shares[3][:-1] + bytes([shares[3][-1] ^ 1])
    with pytest.raises(ShareError, match="inconsistent"):
        shamir.combine([shares[1], shares[2], wrong], 2)


def test_shares_of_different_secrets_lengths_are_refused() -> None:
    short = shamir.split(b"ab", 2, [1, 2])
    long = shamir.split(b"abc", 2, [1, 2])
    with pytest.raises(ShareError, match="different lengths"):
        shamir.combine([short[1], long[2]], 2)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda s: s[:-1], "76 bytes"),
        (lambda s: b"\x02" + s[1:], "version 2"),
        (lambda s: s[:1] + b"\x00" + s[2:], "secret of 0 bytes"),
        (lambda s: s[:2] + bytes(8) + s[10:], "x = 0"),
        (lambda s: s[:10] + b"\xff" * 66, "outside the field"),
    ],
)
def test_malformed_shares_are_refused(mutate: object, match: str) -> None:
    share = shamir.split(b"secret", 1, [5])[5]
    with pytest.raises(ShareError, match=match):
        shamir.combine([mutate(share)], 1)


@pytest.mark.parametrize(
    ("secret", "threshold", "ids", "match"),
    [
        (b"", 1, [1], "1..64 bytes"),
        (bytes(65), 1, [1], "1..64 bytes"),
        (b"s", 0, [1], "threshold"),
        (b"s", 3, [1, 2], "threshold"),
        (b"s", 1, [1, 1], "distinct"),
        (b"s", 1, [0], "holder ids"),
        (b"s", 1, [], "at least one holder"),
    ],
)
def test_split_checks_its_arguments(
    secret: bytes, threshold: int, ids: list[int], match: str
) -> None:
    with pytest.raises(ShareError, match=match):
        shamir.split(secret, threshold, ids)


def test_split_is_deterministic_given_its_entropy() -> None:
    assert shamir.split(b"s", 2, [1, 2], entropy=entropy(3)) == shamir.split(
        b"s", 2, [1, 2], entropy=entropy(3)
    )


# ---------------------------------------------------------------- against the plain Lagrange


@settings(max_examples=40, deadline=None)
@given(
    holders=st.sets(st.integers(1, 2**64 - 1), min_size=2, max_size=24),
    data=st.data(),
)
def test_combine_agrees_with_lagrange_on_the_first_threshold_shares(
    holders: set[int], data: st.DataObject
) -> None:
    threshold = data.draw(st.integers(1, len(holders)))
    secret = data.draw(st.binary(min_size=1, max_size=64))
    shares = shamir.split(secret, threshold, sorted(holders), entropy=entropy(len(holders)))
    points = sorted(shamir._decode(share)[1:] for share in shares.values())

    rebuilt = shamir.combine(shares.values(), threshold)

    assert rebuilt == secret
    assert int.from_bytes(rebuilt, "big") == shamir._interpolate(points[:threshold], 0)


@pytest.mark.parametrize("position", range(7))
def test_one_wrong_share_anywhere_among_spares_is_caught(position: int) -> None:
    holders = [3, 2**63 + 5, 17, 2**40, 9, 2**64 - 1, 123456789]
    shares = [shamir.split(b"k" * 32, 4, holders, entropy=entropy(1))[x] for x in holders]
    wrong = bytearray(shares[position])
    wrong[-7] ^= 0x10
    shares[position] = bytes(wrong)

    with pytest.raises(ShareError, match="inconsistent"):
        shamir.combine(shares, 4)
    del shares[position]  # without it, the other six agree again
    assert shamir.combine(shares, 4) == b"k" * 32
