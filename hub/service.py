"""The hub's JSON API over a ticket registry: public reads, publishing by trusted signers only.

    GET  /api/v1/tickets?dataset=&model=&min_density=&max_density=&min_accuracy=&signer=
    GET  /api/v1/tickets/{id}            the index entry and the card
    GET  /api/v1/tickets/{id}/bundle     the signed .ticket, byte for byte
    GET  /api/v1/tickets/{id}/card       the signed card file
    POST /api/v1/tickets                 {"bundle": base64, "card": base64 | null}

A publish is stored only when the bundle's content id and a trusted signature verify, the
ticket fits the model its manifest names, and its card (if any) is signed by a trusted key
and matches the bundle. Every refusal is an HTTP error that stores nothing.
"""

import base64
import binascii
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import Response

from hub.card import CARD_SUFFIX, CardError, check_card_matches, decode_card, verify_card
from ticket.atomic import atomic_write_bytes
from ticket.bundle import check_against_model, decode_ticket
from ticket.errors import BundleError, IntegrityError, TicketError
from ticket.models import build_model
from ticket_cli.registry import Entry, RegistryError, TicketRegistry

SEARCH_SCHEMA = "ticketfleet.hub.search.v1"
TICKET_SCHEMA = "ticketfleet.hub.ticket.v1"
CARDS_DIR = "cards"
DEFAULT_MAX_UPLOAD_BYTES = 64 * 1024 * 1024


def create_app(
    root: Path, *, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, token: str | None = None
) -> FastAPI:
    """The hub over the registry at `root`; `token`, when set, is also required to publish."""
    root = Path(root)
    TicketRegistry(root).close()  # create it, and fail now on a damaged index
    app = FastAPI(title="ticketfleet hub", version="1")

    def registry() -> TicketRegistry:
        return TicketRegistry(root, create=False)  # one connection per request: threads

    @app.get("/api/v1/tickets")
    def search(
        *,
        dataset: str | None = None,
        model: str | None = None,
        min_density: float = Query(0.0, ge=0.0, le=1.0),
        max_density: float = Query(1.0, ge=0.0, le=1.0),
        min_accuracy: float | None = Query(None, ge=0.0, le=1.0),
        signer: str | None = Query(None, pattern="^[0-9a-f]{16}$"),
    ) -> dict[str, Any]:
        if min_density > max_density:
            raise HTTPException(400, "min_density is above max_density")
        with registry() as opened:
            entries = opened.list(
                task=dataset, model=model, max_density=max_density, min_accuracy=min_accuracy
            )
        found = [
            entry.as_dict()
            for entry in entries
            if entry.density >= min_density and (signer is None or signer in entry.verified_by)
        ]
        return {"schema": SEARCH_SCHEMA, "tickets": found}

    @app.get("/api/v1/tickets/{ticket_id}")
    def show(ticket_id: str) -> dict[str, Any]:
        entry = _entry(registry, ticket_id)
        card_path = root / CARDS_DIR / f"{entry.content_id}{CARD_SUFFIX}"
        card = decode_card(card_path.read_bytes()).card.to_json() if card_path.is_file() else None
        return {"schema": TICKET_SCHEMA, "entry": entry.as_dict(), "card": card}

    @app.get("/api/v1/tickets/{ticket_id}/bundle")
    def bundle(ticket_id: str) -> Response:
        with registry() as opened:
            entry = _entry(registry, ticket_id)
            try:
                data = opened.read_blob(entry)
            except (IntegrityError, RegistryError) as error:
                raise HTTPException(409, str(error)) from error
        return Response(data, media_type="application/octet-stream", headers=_id(entry))

    @app.get("/api/v1/tickets/{ticket_id}/card")
    def card(ticket_id: str) -> Response:
        entry = _entry(registry, ticket_id)
        path = root / CARDS_DIR / f"{entry.content_id}{CARD_SUFFIX}"
        if not path.is_file():
            raise HTTPException(404, f"ticket {entry.short_id} has no card")
        return Response(path.read_bytes(), media_type="application/json", headers=_id(entry))

    @app.post("/api/v1/tickets", status_code=201)
    async def publish(request: Request) -> dict[str, Any]:
        if token is not None and request.headers.get("authorization") != f"Bearer {token}":
            raise HTTPException(401, "publishing needs the hub's token")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_upload_bytes:
            raise HTTPException(413, f"an upload is at most {max_upload_bytes} bytes")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_upload_bytes:
                raise HTTPException(413, f"an upload is at most {max_upload_bytes} bytes")
        data, card_data = _upload_parts(body)
        return _store(root, data, card_data)

    return app


def _store(root: Path, data: bytes, card_data: bytes | None) -> dict[str, Any]:
    try:
        with TicketRegistry(root, create=False) as opened:
            keys = opened.trusted_keys()
    except RegistryError as error:
        raise HTTPException(503, f"the hub trusts no key yet: {error}") from error
    try:
        ticket = decode_ticket(data, trusted_keys=keys)
        spec = ticket.manifest.model
        check_against_model(ticket, build_model(spec.name, spec.args, seed=0))
        if card_data is not None:
            signed = decode_card(card_data)
            verify_card(signed, keys)
            check_card_matches(signed.card, ticket)
    except IntegrityError as error:
        raise HTTPException(403, f"refused: {error}") from error
    except (BundleError, CardError, TicketError) as error:
        raise HTTPException(422, f"refused: {error}") from error
    incoming = root / "incoming"
    incoming.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=incoming) as scratch:
        path = Path(scratch) / "upload.ticket"
        path.write_bytes(data)
        with TicketRegistry(root, create=False) as opened:
            published = opened.publish(path)
    if card_data is not None:  # after the bundle: a card never names a ticket not stored
        cards = root / CARDS_DIR
        cards.mkdir(exist_ok=True)
        atomic_write_bytes(cards / f"{ticket.content_id}{CARD_SUFFIX}", card_data)
    return {"content_id": ticket.content_id, "outcome": str(published.outcome)}


def _upload_parts(body: bytes) -> tuple[bytes, bytes | None]:
    try:
        document = json.loads(body)
        if not isinstance(document, dict) or set(document) - {"bundle", "card"}:
            raise ValueError
        data = base64.b64decode(document["bundle"], validate=True)
        card = document.get("card")
        card_data = None if card is None else base64.b64decode(card, validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise HTTPException(
            400, 'an upload is a JSON object {"bundle": base64, "card": base64 or null}'
        ) from None
    return data, card_data


def _entry(registry: Callable[[], TicketRegistry], ticket_id: str) -> Entry:
    try:
        with registry() as opened:
            return opened.show(ticket_id)
    except RegistryError as error:
        status = 404 if str(error).startswith("no ticket") else 400
        raise HTTPException(status, str(error)) from error


def _id(entry: Entry) -> dict[str, str]:
    return {"x-content-id": entry.content_id, "x-blob-sha256": entry.blob_sha256}
