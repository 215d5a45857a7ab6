"""Ticket cards: drafted from the manifest, checked against the bundle, signed, strict."""

from dataclasses import replace
from pathlib import Path

import pytest

from hub.card import (
    CardError,
    SignedCard,
    check_card_matches,
    decode_card,
    density_points,
    draft_card,
    encode_card,
    sign_card,
    verify_card,
)
from tests.inprocess import find_ticket
from ticket import crypto
from ticket.bundle import Ticket, read_ticket
from ticket.errors import IntegrityError
from ticket_cli.cli import main


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, bytes]:
    return crypto.generate_signing_key()


@pytest.fixture(scope="module")
def heart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return find_ticket(tmp_path_factory.mktemp("card") / "heart.ticket", density=0.3)


@pytest.fixture(scope="module")
def bundle(heart: Path) -> Ticket:
    return read_ticket(heart, allow_unsigned=True)


def test_draft_card_reads_the_facts_of_the_manifest(bundle: Ticket) -> None:
    card = draft_card(bundle, description="heart risk", license="CC-BY-4.0")

    levels = bundle.manifest.metrics["levels"]
    assert card.ticket == bundle.content_id
    assert (card.dataset, card.sites) == ("heart-uci", ("Cleveland",))
    assert [p.density for p in card.points] == [level["density"] for level in levels]
    assert card.final is not None
    assert card.final.density == min(level["density"] for level in levels)
    assert card.final.metrics["accuracy"] == bundle.manifest.metrics["final"]["accuracy"]
    assert (card.parent, card.relation) == (None, "found")
    assert (card.description, card.license) == ("heart risk", "CC-BY-4.0")


def test_density_points_keep_the_controls() -> None:
    metrics = {
        "levels": [
            {
                "density": 0.5,
                "ticket": {"accuracy": 0.8, "note": "x"},
                "controls": {"random": {"accuracy": 0.7}, "reinit": {"accuracy": 0.75}},
            }
        ]
    }

    (point,) = density_points(metrics, 0.5)

    assert point.metrics == {"accuracy": 0.8}
    assert point.controls == {"random": {"accuracy": 0.7}, "reinit": {"accuracy": 0.75}}


def test_signed_card_round_trips_and_verifies(bundle: Ticket, keys: tuple[bytes, bytes]) -> None:
    private, public = keys
    signed = sign_card(SignedCard(draft_card(bundle, title="t")), private)

    decoded = decode_card(encode_card(signed))

    assert decoded == signed
    assert verify_card(decoded, [public]) == [crypto.key_id(public)]
    check_card_matches(decoded.card, bundle)


def test_an_edited_card_no_longer_verifies(bundle: Ticket, keys: tuple[bytes, bytes]) -> None:
    private, public = keys
    signed = sign_card(SignedCard(draft_card(bundle)), private)
    edited = SignedCard(replace(signed.card, license="mine now"), signed.signatures)

    with pytest.raises(IntegrityError):
        verify_card(decode_card(encode_card(edited)), [public])


def test_an_untrusted_signer_is_refused(bundle: Ticket, keys: tuple[bytes, bytes]) -> None:
    signed = sign_card(SignedCard(draft_card(bundle)), keys[0])
    _, other = crypto.generate_signing_key()

    with pytest.raises(IntegrityError, match="not by a trusted key"):
        verify_card(signed, [other])


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"ticket": "0" * 64}, "ticket"),
        ({"dataset": "mnist"}, "data.dataset"),
        ({"parent": "a" * 64, "relation": "re-pruned"}, "lineage.parent"),
        ({"points": ()}, "metrics"),
    ],
)
def test_a_card_that_contradicts_its_bundle_is_refused(
    bundle: Ticket, change: dict[str, object], key: str
) -> None:
    card = replace(draft_card(bundle), **change)  # type: ignore[arg-type]

    with pytest.raises(CardError, match=f"card.{key} does not match"):
        check_card_matches(card, bundle)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "not JSON"),
        (b'{"card": {}}', '"card" and "signatures"'),
        (b'{"card": {"schema": 1}, "signatures": []}', "missing"),
        (b'{"card": [], "signatures": []}', "expected an object"),
    ],
)
def test_malformed_card_files_name_the_problem(data: bytes, message: str) -> None:
    with pytest.raises(CardError, match=message):
        decode_card(data)


def test_ticket_card_command_writes_keeps_prose_and_signs(heart: Path, tmp_path: Path) -> None:
    assert main(["keygen", "--out", str(tmp_path / "k")]) == 0
    before = heart.read_bytes()
    out = tmp_path / "heart.card"
    base = ["card", str(heart), "--allow-unsigned", "--out", str(out)]

    assert main([*base, "--description", "screening aid", "--license", "MIT"]) == 0
    assert main([*base, "--title", "Heart MLP", "--sign-key", str(tmp_path / "k.key")]) == 0

    signed = decode_card(out.read_bytes())
    assert (signed.card.title, signed.card.description) == ("Heart MLP", "screening aid")
    assert signed.card.license == "MIT"
    assert verify_card(signed, [(tmp_path / "k.pub").read_bytes()])
    assert heart.read_bytes() == before  # the card lives beside the bundle, never in it


def test_ticket_card_refuses_a_card_of_another_ticket(heart: Path, tmp_path: Path) -> None:
    out = tmp_path / "heart.card"
    bundle = read_ticket(heart, allow_unsigned=True)
    out.write_bytes(encode_card(SignedCard(replace(draft_card(bundle), dataset="mnist"))))

    assert main(["card", str(heart), "--allow-unsigned", "--out", str(out)]) == 5


def test_a_card_drafted_for_a_fleet_found_ticket_says_where(bundle: Ticket) -> None:
    from ticket.bundle import build_ticket
    from ticket.manifest import FleetSpec

    fleet = FleetSpec(
        run_id="find-heart", devices=4, rounds=2, levels=1, bytes_up=1, bytes_down=2, secagg=True
    )
    found = build_ticket(replace(bundle.manifest, fleet=fleet), bundle.masks, bundle.weights)
    how = draft_card(found).data_how
    assert "on a fleet of 4 devices (2 rounds, secure aggregation" in how
    assert "rewound to round" in how
