"""The hub's JSON API over a ticket registry: public reads, publishing by trusted signers only.

    GET  /api/v1/tickets?dataset=&model=&min_density=&max_density=&min_accuracy=&signer=
                        &parent=&limit=       search; at most MAX_SEARCH_RESULTS entries
    GET  /api/v1/tickets/{id}            the index entry and the card
    GET  /api/v1/tickets/{id}/bundle     the signed .ticket, byte for byte
    GET  /api/v1/tickets/{id}/card       the signed card file
    POST /api/v1/tickets                 {"bundle": base64, "card": base64 | null}

A publish is stored only when the bundle's content id and a trusted signature verify, the
ticket fits the model its manifest names, and its card (if any) is signed by a trusted key
and matches the bundle. Every refusal is an HTTP error that stores nothing. The web page
(hub/pages.py) is served beside the API: `/` and `/tickets/{id}`.
"""

import base64
import binascii
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import Response

from hub.card import CardError, decode_card
from hub.pages import add_pages
from hub.store import HubNotReadyError, card_path, store_upload
from ticket.errors import BundleError, IntegrityError, TicketError
from ticket_cli.registry import Entry, RegistryError, TicketRegistry

SEARCH_SCHEMA = "ticketfleet.hub.search.v1"
TICKET_SCHEMA = "ticketfleet.hub.ticket.v1"
DEFAULT_MAX_UPLOAD_BYTES = 64 * 1024 * 1024
MAX_SEARCH_RESULTS = 1000  # one answer; narrow the filters for the rest


def create_app(
    root: Path, *, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, token: str | None = None
) -> FastAPI:
    """The hub over the registry at `root`; `token`, when set, is also required to publish."""
    root = Path(root)
    TicketRegistry(root).close()  # create it, and fail now on a damaged index
    # No /docs or /redoc: FastAPI's pages load their scripts from a CDN (docs/hub.md is the
    # reference; /openapi.json stays).
    app = FastAPI(title="ticketfleet hub", version="1", docs_url=None, redoc_url=None)

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
        parent: str | None = Query(None, pattern="^[0-9a-f]{64}$"),
        limit: int = Query(MAX_SEARCH_RESULTS, ge=1, le=MAX_SEARCH_RESULTS),
    ) -> dict[str, Any]:
        if min_density > max_density:
            raise HTTPException(400, "min_density is above max_density")
        with registry() as opened:
            entries = opened.list(
                task=dataset,
                model=model,
                min_density=min_density,
                max_density=max_density,
                min_accuracy=min_accuracy,
                signer=signer,
                parent=parent,
                limit=limit + 1,  # one more says whether there are more
            )
        found = [entry.as_dict() for entry in entries[:limit]]
        return {"schema": SEARCH_SCHEMA, "tickets": found, "more": len(entries) > limit}

    @app.get("/api/v1/tickets/{ticket_id}")
    def show(ticket_id: str) -> dict[str, Any]:
        entry = _entry(registry, ticket_id)
        path = card_path(root, entry.content_id)
        card = decode_card(path.read_bytes()).card.to_json() if path.is_file() else None
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
        path = card_path(root, entry.content_id)
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

    add_pages(app)
    return app


def _store(root: Path, data: bytes, card_data: bytes | None) -> dict[str, Any]:
    try:
        published = store_upload(root, data, card_data)
    except HubNotReadyError as error:
        raise HTTPException(503, str(error)) from error
    except IntegrityError as error:
        raise HTTPException(403, f"refused: {error}") from error
    except (BundleError, CardError, TicketError) as error:
        raise HTTPException(422, f"refused: {error}") from error
    return {"content_id": published.entry.content_id, "outcome": str(published.outcome)}


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
