"""The ticket hub's HTTP client (docs/hub.md): search, verified download, publish; stdlib only.

Nothing a hub sends is trusted: a download is kept only after its content id, a signature by
one of the caller's keys and its card (signed by such a key, matching the bundle) verify, and
every answer is read up to a size limit.
"""

import base64
import http.client
import json
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from hub.card import CARD_SUFFIX, check_card_matches, decode_card, verify_card
from ticket.atomic import atomic_write_bytes
from ticket.bundle import Ticket, decode_ticket
from ticket.errors import IntegrityError, TicketError
from ticket_cli.hub_errors import HubAddressError, HubError
from ticket_cli.registry import Entry

API = "/api/v1/tickets"
DEFAULT_TIMEOUT_S = 30.0
MAX_ANSWER_BYTES = 64 * 1024 * 1024  # a JSON answer (1000 search entries are ~1 MB)
MAX_BUNDLE_BYTES = 512 * 1024 * 1024  # a download: far above any ticket, far below memory

_ID = re.compile(r"[0-9a-f]{8,64}")
_CONTENT_ID = re.compile(r"[0-9a-f]{64}")
_ENTRY_FIELDS = frozenset(field.name for field in fields(Entry))


@dataclass(frozen=True)
class SearchQuery:
    """The filters of `GET /api/v1/tickets`; None (and the full density range) means any."""

    dataset: str | None = None
    model: str | None = None
    min_density: float | None = None
    max_density: float | None = None
    min_accuracy: float | None = None
    signer: str | None = None
    parent: str | None = None  # content id: the tickets derived from it

    def params(self) -> dict[str, str]:
        values = {
            "dataset": self.dataset,
            "model": self.model,
            "min_density": self.min_density,
            "max_density": self.max_density,
            "min_accuracy": self.min_accuracy,
            "signer": self.signer,
            "parent": self.parent,
        }
        return {name: str(value) for name, value in values.items() if value is not None}


@dataclass(frozen=True)
class Download:
    """A ticket fetched from a hub whose every check passed; nothing is on disk yet."""

    entry: Entry
    ticket: Ticket
    bundle: bytes
    card: bytes | None  # the signed card file, when the hub has one


def hub_url(text: str) -> str:
    """`text` as a base address without a trailing slash; HubAddressError when malformed."""
    try:
        parts = urllib.parse.urlsplit(text.strip())
        port = parts.port  # ValueError when not a number in range
    except ValueError as error:
        raise HubAddressError(f"--hub {text!r} is not a URL: {error}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HubAddressError(
            f"--hub {text!r}: expected http://HOST[:PORT] or https://HOST[:PORT], "
            "optionally with a path"
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise HubAddressError(f"--hub {text!r}: a hub address has no query, fragment or user")
    del port  # checked: a malformed port fails here, not at the first request
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


class HubClient:
    """One hub at `url`; `ca_file` adds a CA to trust for https (a hub with its own PKI)."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        ca_file: Path | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.url = hub_url(url)
        self._token = token
        self._timeout_s = timeout_s
        tls = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=tls), _NoRedirect()
        )

    def search(self, query: SearchQuery) -> list[Entry]:
        answer = self._json("GET", f"{API}?{urllib.parse.urlencode(query.params())}")
        tickets = answer.get("tickets")
        if not isinstance(tickets, list):
            raise self._malformed("a search answer has no list of tickets")
        return [self._entry(item) for item in tickets]

    def entry(self, ticket_id: str) -> Entry:
        return self._entry(self._json("GET", f"{API}/{_checked_id(ticket_id)}").get("entry"))

    def bundle(self, content_id: str) -> bytes:
        return self._request("GET", f"{API}/{_checked_id(content_id)}/bundle", MAX_BUNDLE_BYTES)

    def card(self, content_id: str) -> bytes | None:
        """The signed card file, or None when the ticket has none."""
        try:
            return self._request("GET", f"{API}/{_checked_id(content_id)}/card", MAX_ANSWER_BYTES)
        except HubError as error:
            if error.status == 404:
                return None
            raise

    def publish(self, bundle: bytes, card: bytes | None) -> dict[str, Any]:
        """The hub's answer, `{"content_id", "outcome"}`; HubError holding any refusal."""
        document = {
            "bundle": base64.b64encode(bundle).decode(),
            "card": None if card is None else base64.b64encode(card).decode(),
        }
        body = json.dumps(document).encode()
        answer = self._json("POST", API, body)
        if not isinstance(answer.get("content_id"), str):
            raise self._malformed("a publish answer has no content_id")
        return answer

    # ------------------------------------------------------------ HTTP

    def _json(self, method: str, path: str, body: bytes | None = None) -> dict[str, Any]:
        data = self._request(method, path, MAX_ANSWER_BYTES, body)
        try:
            document = json.loads(data)
        except ValueError:
            raise self._malformed("its answer is not JSON") from None
        if not isinstance(document, dict):
            raise self._malformed("its answer is not a JSON object")
        return document

    def _request(self, method: str, path: str, limit: int, body: bytes | None = None) -> bytes:
        headers = {"Accept": "application/json, application/octet-stream"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self._token is not None and method == "POST":
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(self.url + path, body, headers, method=method)
        try:
            with self._opener.open(request, timeout=self._timeout_s) as response:
                return _read_limited(response, limit, self.url)
        except urllib.error.HTTPError as error:
            with error:
                detail = _detail(error.read(MAX_ANSWER_BYTES))
            raise HubError(
                f"the hub at {self.url} answered {error.code}: {detail}", error.code
            ) from None
        except urllib.error.URLError as error:
            raise HubError(f"cannot reach the hub at {self.url}: {_reason(error.reason)}") from None
        except (TimeoutError, http.client.HTTPException, ConnectionError) as error:
            raise HubError(f"the connection to the hub at {self.url} failed: {error!r}") from None

    def _entry(self, value: Any) -> Entry:
        if not isinstance(value, dict) or set(value) != _ENTRY_FIELDS:
            raise self._malformed("a ticket entry does not have the fields of an entry")
        if not isinstance(value["content_id"], str) or not _CONTENT_ID.fullmatch(
            value["content_id"]
        ):
            raise self._malformed("a ticket entry's content_id is not 64 hex characters")
        # What the commands print or compare; the rest is shown as it came (printable()).
        for name in ("model", "task", "created_at", "published_at", "blob_sha256"):
            if not isinstance(value[name], str):
                raise self._malformed(f"a ticket entry's {name} is not a string")
        for name in ("signers", "verified_by"):
            if not isinstance(value[name], list) or not all(
                isinstance(key_id, str) for key_id in value[name]
            ):
                raise self._malformed(f"a ticket entry's {name} is not a list of key ids")
        return Entry(**value)

    def _malformed(self, what: str) -> HubError:
        return HubError(f"the hub at {self.url} sent a malformed answer: {what}")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A hub never redirects: a 3xx is an error, and a token is never sent elsewhere."""

    def redirect_request(self, *_: Any, **__: Any) -> None:
        return None


# ---------------------------------------------------------------- verified pull


def fetch_verified(
    client: HubClient, ticket_id: str, trusted_keys: Sequence[bytes], *, with_card: bool = True
) -> Download:
    """Download ticket `ticket_id` (id or unique prefix) and its card, and check both.

    IntegrityError when the bytes are not the ticket asked for, or no trusted key signed the
    bundle or its card; CardError when the card describes another ticket. Writes nothing.
    """
    if not trusted_keys:
        raise TicketError("pulling from a hub needs the publisher's public key: pass --key PUB")
    entry = client.entry(ticket_id)
    if not entry.content_id.startswith(ticket_id.strip().lower()):
        raise IntegrityError(f"the hub answered for ticket {entry.short_id}, not {ticket_id}")
    data = client.bundle(entry.content_id)
    ticket = decode_ticket(data, trusted_keys=trusted_keys)
    if ticket.content_id != entry.content_id:
        raise IntegrityError(f"the hub served ticket {ticket.content_id[:12]} for {entry.short_id}")
    card = client.card(entry.content_id) if with_card else None
    if card is not None:
        signed = decode_card(card)
        verify_card(signed, trusted_keys)
        check_card_matches(signed.card, ticket)
    return Download(entry, ticket, data, card)


def write_download(download: Download, out: Path, *, overwrite: bool = False) -> Path | None:
    """Write the bundle to `out` and its card to `out.card` (returned), each atomically.

    The card goes first: `out` appearing is the sign that the pull completed.
    """
    out = Path(out)
    card_path = out.with_name(out.name + CARD_SUFFIX) if download.card is not None else None
    for path in (out, card_path):
        if path is not None and path.exists() and not overwrite:
            raise FileExistsError(f"{path} already exists; pass --force to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    if card_path is not None and download.card is not None:
        atomic_write_bytes(card_path, download.card)
    atomic_write_bytes(out, download.bundle)
    return card_path


# ---------------------------------------------------------------- helpers


def _checked_id(ticket_id: str) -> str:
    """A ticket id or prefix safe to put in a URL path; else a TicketError naming it."""
    candidate = ticket_id.strip().lower()
    if not _ID.fullmatch(candidate):
        raise TicketError(f"a ticket id is 8 to 64 hex characters, got {ticket_id!r}")
    return candidate


def _read_limited(response: Any, limit: int, url: str) -> bytes:
    data: bytes = response.read(limit + 1)
    if len(data) > limit:
        raise HubError(f"the hub at {url} sent more than {limit} bytes; refusing the answer")
    return data


def _detail(body: bytes) -> str:
    """FastAPI's `{"detail": ...}` as text; else the body itself, cut short."""
    try:
        detail = json.loads(body)["detail"]
    except (ValueError, KeyError, TypeError):
        return body[:500].decode("utf-8", "replace").strip() or "(no message)"
    return detail if isinstance(detail, str) else json.dumps(detail, sort_keys=True)


def _reason(reason: object) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is `ticket hub serve` running there?)"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason)


def token_of(path: Path) -> str:
    """The publish token in `path`, stripped; TicketError when the file is empty."""
    token = Path(path).read_text().strip()
    if not token:
        raise TicketError(f"{path} is empty; it should hold the hub's publish token")
    return token
