"""Shamir secret sharing of short byte strings over the prime field GF(2^521 - 1).

A secret of up to 64 bytes is one field element (read big-endian), the constant term of a
random polynomial of degree t - 1; the share of holder x is the polynomial's value at x. Any t
shares give the secret back by Lagrange interpolation at 0. Any t - 1 or fewer reveal nothing:
for every candidate secret there is exactly one polynomial through those points with that
constant term, and the coefficients are uniform, so every secret is equally likely
(information-theoretic; it holds only if the coefficients come from a CSPRNG).

Share layout (76 bytes): u8 version = 1 | u8 secret length | u64 x, big-endian | 66-byte value,
big-endian. x is the holder's id (>= 1), so a share names who held it.
"""

import math
import os
import struct
from collections.abc import Callable, Iterable, Sequence

from ticket.secagg.errors import ShareError

PRIME = 2**521 - 1  # a Mersenne prime: 521 bits hold any 64-byte secret
MAX_SECRET_BYTES = 64
SHARE_VERSION = 1
_VALUE_BYTES = 66  # ceil(521 / 8)
_HEAD = struct.Struct(">BBQ")  # version, secret length, x
SHARE_BYTES = _HEAD.size + _VALUE_BYTES
_U64_MAX = 2**64 - 1

Entropy = Callable[[int], bytes]  # n -> n bytes from a CSPRNG (os.urandom in production)


def split(
    secret: bytes, threshold: int, share_ids: Iterable[int], *, entropy: Entropy = os.urandom
) -> dict[int, bytes]:
    """{holder id: share} such that any `threshold` of the shares give `secret` back."""
    ids = _check_ids(share_ids)
    if not 1 <= len(secret) <= MAX_SECRET_BYTES:
        raise ShareError(f"secret must be 1..{MAX_SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= len(ids):
        raise ShareError(f"threshold must be 1..{len(ids)} (the holder count), got {threshold}")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [_random_element(entropy) for _ in range(threshold - 1)]
    return {x: _encode(len(secret), x, _evaluate(coefficients, x)) for x in ids}


def combine(shares: Iterable[bytes], threshold: int) -> bytes:
    """The secret from at least `threshold` shares.

    Every share must lie on one polynomial of degree < `threshold` (any `threshold` of them fix
    it), or ShareError("inconsistent") is raised: a wrong share is caught whenever there is a
    spare.
    """
    if threshold < 1:
        raise ShareError(f"threshold must be >= 1, got {threshold}")
    points: dict[int, int] = {}
    lengths = set()
    for share in shares:
        length, x, y = _decode(share)
        if x in points:
            raise ShareError(f"two shares for holder {x}")
        points[x] = y
        lengths.add(length)
    if len(points) < threshold:
        raise ShareError(f"need {threshold} shares, got {len(points)}")
    if len(lengths) != 1:
        raise ShareError("shares are of secrets of different lengths")
    value = _secret_of(sorted(points.items()), threshold)
    if value is None:
        raise ShareError("shares are inconsistent: at least one is wrong")
    length = lengths.pop()
    if value >= 1 << (8 * length):
        raise ShareError("shares are inconsistent: the secret does not fit its length")
    return value.to_bytes(length, "big")


def share_holder(share: bytes) -> int:
    """The x-coordinate (holder id) a share carries."""
    return _decode(share)[1]


# ---------------------------------------------------------------- field arithmetic


def _random_element(entropy: Entropy) -> int:
    while True:  # rejection sampling: uniform on [0, p); one retry in 2^521 draws
        draw = int.from_bytes(entropy(_VALUE_BYTES), "big") & PRIME  # PRIME is 521 one-bits
        if draw < PRIME:
            return draw


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    result = 0
    for coefficient in reversed(coefficients):  # Horner
        result = (result * x + coefficient) % PRIME
    return result


def _interpolate(points: Sequence[tuple[int, int]], at: int) -> int:
    """The value at `at` of the polynomial through `points` (Lagrange)."""
    total = 0
    for i, (xi, yi) in enumerate(points):
        numerator, denominator = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                numerator = numerator * (at - xj) % PRIME
                denominator = denominator * (xi - xj) % PRIME
        total += yi * numerator * pow(denominator, -1, PRIME)
    return total % PRIME


def _secret_of(points: Sequence[tuple[int, int]], threshold: int) -> int | None:
    """f(0) of the polynomial f of degree < `threshold` through all `points` (distinct x >= 1),
    or None if no such polynomial goes through them all.

    With the barycentric weights w_i = 1 / prod_{j != i} (x_i - x_j) of all m points,
    sum_i w_i x_i^k y_i is the coefficient of x^(m - 1 - k) of the polynomial through them once
    the higher ones vanish, so the points lie on one of degree < t iff that sum is 0 for
    k = 0..m - t - 1; then f(0) = sum_i w_i y_i prod_{j != i} (-x_j) (Lagrange at 0).
    Differences and products of the x (64-bit ids) are exact small integers; the m weights
    take a single modular inverse (_inverses): one pow per secret instead of t per point.
    """
    xs = [x for x, _ in points]
    weights = _inverses([_product(xi - xj for xj in xs if xj != xi) for xi in xs])
    terms = [_reduce(w * y) for w, (_, y) in zip(weights, points, strict=True)]  # w_i y_i
    moments = terms
    for _ in range(len(points) - threshold):
        if sum(moments) % PRIME:
            return None
        moments = [_reduce(moment * x) for moment, x in zip(moments, xs, strict=True)]
    everyone = math.prod(-x for x in xs)  # exact
    others = (everyone // -xi % PRIME for xi in xs)  # prod_{j != i} (-x_j), an exact division
    return sum(term * other for term, other in zip(terms, others, strict=True)) % PRIME


def _product(factors: Iterable[int]) -> int:
    """The product mod p of small integers, exact first (one reduction, no division each)."""
    return math.prod(factors) % PRIME


def _inverses(values: Sequence[int]) -> list[int]:
    """[1 / v mod p for v in values] by Montgomery's trick: prefix products, one pow, and
    three multiplications per value (every value must be nonzero mod p)."""
    prefix = [1]
    for value in values:
        prefix.append(_reduce(prefix[-1] * value))
    inverse = pow(prefix[-1], -1, PRIME)  # 1 / (v_0 ... v_{m-1})
    result = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        result[i] = _reduce(inverse * prefix[i])  # 1 / v_i
        inverse = _reduce(inverse * values[i])  # 1 / (v_0 ... v_{i-1})
    return result


def _reduce(value: int) -> int:
    """value mod p for 0 <= value < p^2: 2^521 = 1 mod p, so fold the high bits onto the low
    ones (a shift and an add, where % would divide)."""
    value = (value & PRIME) + (value >> 521)  # < 2p
    return value - PRIME if value >= PRIME else value


# ---------------------------------------------------------------- share bytes


def _encode(length: int, x: int, y: int) -> bytes:
    return _HEAD.pack(SHARE_VERSION, length, x) + y.to_bytes(_VALUE_BYTES, "big")


def _decode(share: bytes) -> tuple[int, int, int]:
    if not isinstance(share, bytes) or len(share) != SHARE_BYTES:
        raise ShareError(f"a share is {SHARE_BYTES} bytes")
    version, length, x = _HEAD.unpack_from(share)
    if version != SHARE_VERSION:
        raise ShareError(f"share version {version} is not supported; this reads {SHARE_VERSION}")
    if not 1 <= length <= MAX_SECRET_BYTES:
        raise ShareError(f"share claims a secret of {length} bytes")
    if x == 0:
        raise ShareError("share has x = 0 (that point is the secret itself)")
    y = int.from_bytes(share[_HEAD.size :], "big")
    if y >= PRIME:
        raise ShareError("share value is outside the field")
    return length, x, y


def _check_ids(share_ids: Iterable[int]) -> list[int]:
    ids = list(share_ids)
    if any(isinstance(x, bool) or not isinstance(x, int) or not 1 <= x <= _U64_MAX for x in ids):
        raise ShareError(f"holder ids must be integers in 1..{_U64_MAX}")
    if len(set(ids)) != len(ids):
        raise ShareError("holder ids must be distinct")
    if not ids:
        raise ShareError("need at least one holder")
    return ids
