"""The hub's JSON API: public search and download; publishing checked, refusals store nothing."""

import base64
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from hub.card import SignedCard, draft_card, encode_card, sign_card
from hub.service import create_app
from tests.ticket_cli.registry_tickets import Tickets, flip_byte
from ticket.bundle import read_ticket


@pytest.fixture
def root(tmp_path: Path, tickets: Tickets) -> Path:
    (tmp_path / "hub" / "trusted").mkdir(parents=True)
    (tmp_path / "hub" / "trusted" / "fleet.pub").write_bytes(tickets.fleet_pub.read_bytes())
    return tmp_path / "hub"


def _upload(path: Path, card: bytes | None = None) -> dict[str, str | None]:
    encoded = None if card is None else base64.b64encode(card).decode()
    return {"bundle": base64.b64encode(path.read_bytes()).decode(), "card": encoded}


def _card(tickets: Tickets, path: Path, **prose: str) -> bytes:
    card = draft_card(read_ticket(path, allow_unsigned=True), **prose)
    return encode_card(sign_card(SignedCard(card), tickets.fleet_key.read_bytes()))


def test_publish_search_card_and_bundle(root: Path, tickets: Tickets) -> None:
    client = TestClient(create_app(root))
    card = _card(tickets, tickets.sparse, description="sparse heart")

    published = client.post("/api/v1/tickets", json=_upload(tickets.sparse, card))
    client.post("/api/v1/tickets", json=_upload(tickets.dense))

    content_id = tickets.content_id(tickets.sparse)
    assert published.status_code == 201
    assert published.json() == {"content_id": content_id, "outcome": "added"}
    found = client.get("/api/v1/tickets", params={"dataset": "heart-uci", "max_density": 0.3})
    assert [t["content_id"] for t in found.json()["tickets"]] == [content_id]
    shown = client.get(f"/api/v1/tickets/{content_id[:12]}").json()
    assert shown["card"]["description"] == "sparse heart"
    bundle = client.get(f"/api/v1/tickets/{content_id}/bundle")
    assert bundle.content == tickets.sparse.read_bytes()
    assert bundle.headers["x-content-id"] == content_id
    assert client.get(f"/api/v1/tickets/{content_id}/card").content == card
    signer = client.get("/api/v1/tickets", params={"signer": tickets.fleet_id}).json()
    assert len(signer["tickets"]) == 2


@pytest.mark.parametrize(
    ("name", "status"), [("foreign", 403), ("unsigned", 422), ("tampered", 403)]
)
def test_untrusted_or_damaged_uploads_store_nothing(
    root: Path, tickets: Tickets, name: str, status: int
) -> None:
    client = TestClient(create_app(root))

    response = client.post("/api/v1/tickets", json=_upload(getattr(tickets, name)))

    assert response.status_code == status
    assert "refused" in response.json()["detail"]
    assert client.get("/api/v1/tickets").json()["tickets"] == []


def test_a_card_of_another_ticket_is_refused(root: Path, tickets: Tickets) -> None:
    client = TestClient(create_app(root))

    response = client.post(
        "/api/v1/tickets", json=_upload(tickets.sparse, _card(tickets, tickets.dense))
    )

    assert response.status_code == 422
    assert "card.ticket does not match" in response.json()["detail"]
    assert client.get("/api/v1/tickets").json()["tickets"] == []
    assert not (root / "cards").exists()


def test_oversized_and_malformed_uploads(root: Path, tickets: Tickets) -> None:
    small = TestClient(create_app(root, max_upload_bytes=1000))

    too_big = small.post("/api/v1/tickets", json=_upload(tickets.dense))
    not_json = small.post("/api/v1/tickets", content=b"{nope")

    assert too_big.status_code == 413
    assert not_json.status_code == 400
    assert small.get("/api/v1/tickets").json()["tickets"] == []


def test_a_token_hub_refuses_publishers_without_it(root: Path, tickets: Tickets) -> None:
    client = TestClient(create_app(root, token="s3cret"))

    refused = client.post("/api/v1/tickets", json=_upload(tickets.dense))
    allowed = client.post(
        "/api/v1/tickets",
        json=_upload(tickets.dense),
        headers={"Authorization": "Bearer s3cret"},
    )

    assert (refused.status_code, allowed.status_code) == (401, 201)


@pytest.mark.parametrize(
    "params",
    [
        {"max_density": "2"},
        {"min_density": "x"},
        {"signer": "zz"},
        {"min_density": "0.9", "max_density": "0.1"},
    ],
)
def test_malformed_queries_are_client_errors(root: Path, params: dict[str, str]) -> None:
    response = TestClient(create_app(root)).get("/api/v1/tickets", params=params)

    assert response.status_code in {400, 422}
    assert json.dumps(response.json()["detail"])


def test_a_tampered_blob_is_not_served(root: Path, tickets: Tickets) -> None:
    client = TestClient(create_app(root))
    content_id = client.post("/api/v1/tickets", json=_upload(tickets.dense)).json()["content_id"]
    flip_byte(root / "blobs" / content_id[:2] / f"{content_id}.ticket", 100)

    response = client.get(f"/api/v1/tickets/{content_id}/bundle")

    assert response.status_code == 409
    assert "corrupt" in response.json()["detail"]


def test_unknown_and_bad_ids(root: Path) -> None:
    client = TestClient(create_app(root))

    assert client.get("/api/v1/tickets/" + "ab" * 8).status_code == 404
    assert client.get("/api/v1/tickets/xyz").status_code == 400


def test_search_keeps_to_its_limit_and_says_there_is_more(root: Path, tickets: Tickets) -> None:
    client = TestClient(create_app(root))
    for path in (tickets.dense, tickets.sparse):
        client.post("/api/v1/tickets", json=_upload(path))

    first = client.get("/api/v1/tickets", params={"limit": 1}).json()
    every = client.get("/api/v1/tickets", params={"limit": 2}).json()

    assert (len(first["tickets"]), first["more"]) == (1, True)
    assert (len(every["tickets"]), every["more"]) == (2, False)
    assert client.get("/api/v1/tickets", params={"limit": 0}).status_code == 422


def test_the_web_page_is_served_with_a_same_origin_policy(root: Path) -> None:
    client = TestClient(create_app(root))

    search, card = client.get("/"), client.get("/tickets/" + "ab" * 8)
    script = client.get("/static/hub.js")

    for page, marker in [(search, 'data-page="search"'), (card, 'data-page="ticket"')]:
        assert page.status_code == 200
        assert marker in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
    assert script.status_code == 200
    for parser in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert parser not in script.text  # card text is user content: text nodes only
    assert "http" not in script.text.replace("http://www.w3.org/2000/svg", "")  # no CDN
    assert client.get("/docs").status_code == 404  # FastAPI's page would load a CDN
