"""The hub's web page (hub/web/): search at `/`, a ticket's card at `/tickets/{id}`.

Static files only: the page's own script reads the JSON API, draws the plot as inline SVG and
loads nothing from anywhere else, which the Content-Security-Policy below enforces.
"""

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parent / "web"

# Same-origin scripts, styles and fetches only: a card's text can never run as script, and
# the page can never be framed or send a referrer to another site.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def add_pages(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def search_page() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers=PAGE_HEADERS)

    @app.get("/tickets/{ticket_id}", include_in_schema=False)
    def ticket_page(ticket_id: str) -> FileResponse:
        del ticket_id  # the page's script reads it from its own address
        return FileResponse(WEB_DIR / "ticket.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
