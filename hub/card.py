"""Ticket cards: what a ticket is good for, in a signed JSON file kept beside its bundle.

A card lives in `T.ticket.card` (docs/hub.md, "Ticket cards"), never inside the bundle, so a
ticket's bytes and content id do not move when its card is written or edited:

    {"card": {...}, "signatures": [{"alg": "ed25519", "key_id": ..., "sig": base64}]}

The signature covers CARD_SIGNATURE_DOMAIN + the canonical JSON of `card`, and `card.ticket`
is the bundle's content id, so a signed card vouches for exactly one ticket. Its facts (the
dataset, the metrics per density with the controls, the parent) are read from the ticket's
manifest and must match it (`check_card_matches`); the prose (title, description, task,
intended use, how the data was used, lineage relation, license) is the author's to edit.
"""

import base64
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ticket import crypto
from ticket.bundle import Ticket
from ticket.errors import BundleError, IntegrityError
from ticket.tensorfile import canonical_json, parse_json

CARD_SCHEMA = "ticketfleet.card.v1"
CARD_SUFFIX = ".card"
CARD_SIGNATURE_DOMAIN = b"ticketfleet.card.signature.v1\x00"
SIGNATURE_ALG = "ed25519"
RELATIONS = ("found", "re-pruned", "fine-tuned")  # how a ticket relates to its parent
CONTROLS = ("random", "reinit")  # the random-pruning and re-init controls of `ticket find`
MAX_TEXT_CHARS = 4000  # one prose field; a card is a page, not a paper

_CARD_KEYS = {
    "schema",
    "ticket",
    "title",
    "description",
    "task",
    "intended_use",
    "data",
    "metrics",
    "lineage",
    "license",
}
_TEXT_KEYS = ("title", "description", "task", "intended_use", "license")


class CardError(BundleError):
    """A card file is malformed, or does not describe the ticket it is published with."""


@dataclass(frozen=True)
class DensityPoint:
    """One level of the search: the ticket's test metrics and its controls' at this density."""

    density: float
    metrics: Mapping[str, float]  # accuracy, auc, ...: the ticket (mask + W_k) itself
    controls: Mapping[str, Mapping[str, float]]  # "random" / "reinit" -> their metrics

    def to_json(self) -> dict[str, Any]:
        return {
            "density": self.density,
            "metrics": dict(self.metrics),
            "controls": {name: dict(values) for name, values in self.controls.items()},
        }


@dataclass(frozen=True)
class Card:
    ticket: str  # the bundle's content id
    title: str
    description: str
    task: str  # what it predicts, e.g. "heart disease (binary)"
    intended_use: str
    dataset: str  # manifest data.name
    sites: tuple[str, ...] | None  # manifest data.sites
    data_how: str  # how the data was used to find it (pooled proxy data, a fleet, ...)
    points: tuple[DensityPoint, ...]  # densest first, as the search went
    parent: str | None  # manifest parent
    relation: str  # one of RELATIONS: "found" when there is no parent
    license: str

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": CARD_SCHEMA,
            "ticket": self.ticket,
            "title": self.title,
            "description": self.description,
            "task": self.task,
            "intended_use": self.intended_use,
            "data": {
                "dataset": self.dataset,
                "sites": None if self.sites is None else list(self.sites),
                "how": self.data_how,
            },
            "metrics": [point.to_json() for point in self.points],
            "lineage": {"parent": self.parent, "relation": self.relation},
            "license": self.license,
        }

    @property
    def final(self) -> DensityPoint | None:
        """The sparsest point: the ticket as shipped."""
        return min(self.points, key=lambda p: p.density) if self.points else None


@dataclass(frozen=True)
class CardSignature:
    key_id: str
    signature: bytes


@dataclass(frozen=True)
class SignedCard:
    card: Card
    signatures: tuple[CardSignature, ...] = ()

    @property
    def signers(self) -> list[str]:
        return [s.key_id for s in self.signatures]


# ---------------------------------------------------------------- from a ticket


def draft_card(ticket: Ticket, **prose: str) -> Card:
    """The card a ticket's manifest implies; `prose` overrides title, description, task, ..."""
    manifest = ticket.manifest
    method = manifest.method
    fleet = manifest.fleet
    where = (
        f"on {manifest.data.name}, rewound to step {manifest.rewind_step}"
        if fleet is None  # a fleet search's rewind point counts rounds
        else f"on a fleet of {fleet.devices} devices ({fleet.rounds} rounds"
        + (", secure aggregation" if fleet.secagg else "")
        + f"; no reading left a device), rewound to round {manifest.rewind_step}"
    )
    how = f"found by {method.name}" + (f" ({method.pruner})" if method.pruner else "") + f" {where}"
    card = Card(
        ticket=ticket.content_id,
        title=f"{manifest.model.name} on {manifest.data.name}",
        description="",
        task=manifest.data.name,
        intended_use="",
        dataset=manifest.data.name,
        sites=manifest.data.sites,
        data_how=how,
        points=density_points(manifest.metrics, manifest.density.overall),
        parent=manifest.parent,
        relation="found" if manifest.parent is None else "re-pruned",
        license="",
    )
    unknown = set(prose) - {"title", "description", "task", "intended_use", "data_how", "license"}
    if unknown:
        raise CardError(f"no such card field: {', '.join(sorted(unknown))}")
    edits: dict[str, Any] = dict(prose)  # all str fields, checked just above
    return replace(card, **edits)


def density_points(metrics: Mapping[str, Any], density: float) -> tuple[DensityPoint, ...]:
    """Every level `ticket find` recorded in `metrics.levels`; else one point from `final`."""
    levels = metrics.get("levels")
    points: list[DensityPoint] = []
    if isinstance(levels, list):
        for level in levels:
            if not isinstance(level, dict) or not _is_number(level.get("density")):
                continue
            controls = level.get("controls")
            points.append(
                DensityPoint(
                    density=float(level["density"]),
                    metrics=_numbers(level.get("ticket")),
                    controls={
                        name: _numbers(values)
                        for name, values in sorted((controls or {}).items())
                        if name in CONTROLS and isinstance(values, dict)
                    }
                    if isinstance(controls, dict)
                    else {},
                )
            )
    if not points and isinstance(metrics.get("final"), dict):
        points.append(DensityPoint(float(density), _numbers(metrics["final"]), {}))
    return tuple(points)


def check_card_matches(card: Card, ticket: Ticket) -> None:
    """CardError naming the first fact of `card` that its ticket's manifest contradicts."""
    manifest = ticket.manifest
    facts = draft_card(ticket)
    checks = [
        ("ticket", card.ticket, ticket.content_id),
        ("data.dataset", card.dataset, facts.dataset),
        ("data.sites", card.sites, facts.sites),
        ("lineage.parent", card.parent, manifest.parent),
        ("metrics", _points_json(card.points), _points_json(facts.points)),
    ]
    for key, given, actual in checks:
        if given != actual:
            raise CardError(f"card.{key} does not match the ticket's manifest")
    if (card.parent is None) != (card.relation == "found"):
        raise CardError('card.lineage.relation is "found" exactly when there is no parent')


# ---------------------------------------------------------------- signing


def sign_card(signed: SignedCard, private_pem: bytes) -> SignedCard:
    """`signed` with this key's signature added, or replaced when the key had signed it."""
    signer = crypto.key_id(crypto.public_key_of(private_pem))
    signature = CardSignature(signer, crypto.sign(private_pem, _message(signed.card)))
    others = [s for s in signed.signatures if s.key_id != signer]
    return SignedCard(signed.card, tuple(sorted([*others, signature], key=lambda s: s.key_id)))


def verify_card(signed: SignedCard, trusted_keys: Sequence[bytes]) -> list[str]:
    """The trusted key ids whose signature verifies; IntegrityError when none, or one fails."""
    message = _message(signed.card)
    trusted = {crypto.key_id(pem): pem for pem in trusted_keys}
    verified = []
    for signature in signed.signatures:
        if signature.key_id in trusted:
            try:
                crypto.verify(trusted[signature.key_id], message, signature.signature)
            except IntegrityError:
                raise IntegrityError("card file is corrupt or was modified") from None
            verified.append(signature.key_id)
    if not verified:
        signers = ", ".join(signed.signers) or "nobody"
        raise IntegrityError(f"card is signed by {signers}, not by a trusted key")
    return verified


def _message(card: Card) -> bytes:
    return CARD_SIGNATURE_DOMAIN + canonical_json(card.to_json())


# ---------------------------------------------------------------- bytes


def encode_card(signed: SignedCard) -> bytes:
    """Canonical JSON plus a newline: one encoding per card, readable in an editor."""
    document = {
        "card": signed.card.to_json(),
        "signatures": [
            {
                "alg": SIGNATURE_ALG,
                "key_id": s.key_id,
                "sig": base64.b64encode(s.signature).decode(),
            }
            for s in signed.signatures
        ],
    }
    return canonical_json(document) + b"\n"


def decode_card(data: bytes) -> SignedCard:
    """Parse a card file (signed or not); CardError naming the first bad key."""
    try:
        document = parse_json(data.strip())
    except ValueError as error:
        raise CardError(f"card is not JSON: {error}") from error
    if not isinstance(document, dict) or set(document) != {"card", "signatures"}:
        raise CardError('a card file is an object with keys "card" and "signatures"')
    return SignedCard(card_from_json(document["card"]), _signatures(document["signatures"]))


def card_from_json(document: Any) -> Card:
    if not isinstance(document, dict):
        raise CardError("card: expected an object")
    if set(document) != _CARD_KEYS:
        missing, extra = _CARD_KEYS - set(document), set(document) - _CARD_KEYS
        raise CardError(
            "card: "
            + "; ".join(
                [f"missing {', '.join(sorted(missing))}"] * bool(missing)
                + [f"unknown {', '.join(sorted(extra))}"] * bool(extra)
            )
        )
    if document["schema"] != CARD_SCHEMA:
        raise CardError(f"card.schema: expected {CARD_SCHEMA!r}, got {document['schema']!r}")
    for key in ("ticket", *_TEXT_KEYS):
        _text(document[key], f"card.{key}")
    data = _object(document["data"], "card.data", {"dataset", "sites", "how"})
    lineage = _object(document["lineage"], "card.lineage", {"parent", "relation"})
    sites = data["sites"]
    if sites is not None and not (
        isinstance(sites, list) and all(isinstance(s, str) for s in sites)
    ):
        raise CardError("card.data.sites: expected a list of strings or null")
    if lineage["parent"] is not None:
        _text(lineage["parent"], "card.lineage.parent")
    if lineage["relation"] not in RELATIONS:
        raise CardError(f"card.lineage.relation: expected one of {', '.join(RELATIONS)}")
    if not isinstance(document["metrics"], list):
        raise CardError("card.metrics: expected a list")
    return Card(
        ticket=document["ticket"],
        title=document["title"],
        description=document["description"],
        task=document["task"],
        intended_use=document["intended_use"],
        dataset=_text(data["dataset"], "card.data.dataset"),
        sites=None if sites is None else tuple(sites),
        data_how=_text(data["how"], "card.data.how"),
        points=tuple(_point(p, f"card.metrics[{i}]") for i, p in enumerate(document["metrics"])),
        parent=lineage["parent"],
        relation=lineage["relation"],
        license=document["license"],
    )


def _point(value: Any, at: str) -> DensityPoint:
    point = _object(value, at, {"density", "metrics", "controls"})
    if not _is_number(point["density"]) or not 0.0 <= point["density"] <= 1.0:
        raise CardError(f"{at}.density: expected a number in [0, 1]")
    controls = _object(point["controls"], f"{at}.controls", None)
    for name in controls:
        if name not in CONTROLS:
            raise CardError(f"{at}.controls: unknown control {name!r} (valid: random, reinit)")
    return DensityPoint(
        density=float(point["density"]),
        metrics=_metric_values(point["metrics"], f"{at}.metrics"),
        controls={n: _metric_values(v, f"{at}.controls.{n}") for n, v in controls.items()},
    )


def _signatures(value: Any) -> tuple[CardSignature, ...]:
    if not isinstance(value, list):
        raise CardError("card signatures: expected a list")
    found = []
    for entry in value:
        try:
            if entry["alg"] != SIGNATURE_ALG or set(entry) != {"alg", "key_id", "sig"}:
                raise ValueError
            signature = base64.b64decode(entry["sig"], validate=True)
            if not isinstance(entry["key_id"], str) or len(signature) != crypto.SIGNATURE_BYTES:
                raise ValueError
        except (ValueError, TypeError, KeyError):
            raise CardError("card signatures: malformed entry") from None
        found.append(CardSignature(entry["key_id"], signature))
    if len({s.key_id for s in found}) != len(found):
        raise CardError("card signatures: one key signed twice")
    return tuple(sorted(found, key=lambda s: s.key_id))


def _object(value: Any, at: str, keys: set[str] | None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CardError(f"{at}: expected an object")
    if keys is not None and set(value) != keys:
        raise CardError(f"{at}: expected the keys {', '.join(sorted(keys))}")
    return value


def _text(value: Any, at: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT_CHARS:
        raise CardError(f"{at}: expected a string of at most {MAX_TEXT_CHARS} characters")
    return value


def _metric_values(value: Any, at: str) -> dict[str, float]:
    values = _object(value, at, None)
    if not all(isinstance(k, str) and _is_number(v) for k, v in values.items()):
        raise CardError(f"{at}: expected an object of finite numbers")
    return {k: float(v) for k, v in sorted(values.items())}


def _numbers(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        return {}
    return {k: float(v) for k, v in sorted(value.items()) if _is_number(v)}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _points_json(points: Sequence[DensityPoint]) -> list[dict[str, Any]]:
    return [point.to_json() for point in points]
