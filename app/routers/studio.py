"""The studio: a browser page for every operation at ``/``, static files shipped in ``app/studio``.

No build step and no request to another host: plain HTML, CSS and JavaScript that read ``/openapi.json``
(every field, default and limit), ``/readyz`` (which operations a live worker serves) and
``/studio/config.json`` (whether an API key is needed), submit jobs, follow ``/jobs/{id}/events`` and show
the previews and results. The page and its files need no API key; the API calls it makes send
``X-API-Key`` when the service asks for one.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from app.deps import SettingsDep
from core.operations import OPERATIONS

STUDIO = Path(__file__).resolve().parent.parent / "studio"
NO_CACHE = {"Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)


@router.get("/")
def index() -> FileResponse:
    return FileResponse(STUDIO / "index.html", media_type="text/html", headers=NO_CACHE)


@router.get("/studio/config.json")
def config(settings: SettingsDep) -> dict[str, object]:
    """What the page cannot read from /openapi.json: the operations (name, route, transport, uploads) and
    whether it must ask for an API key."""
    return {
        "api_key_required": bool(settings.api_key),
        "preview_every": settings.preview_every,
        "operations": [
            {
                "name": op.name,
                "path": op.path,
                "transport": op.transport,
                "summary": op.summary,
                "tag": op.tag,
                "uploads": [{"name": u.name, "description": u.description} for u in op.uploads],
            }
            for op in OPERATIONS.values()
        ],
    }


def install_studio(app: FastAPI) -> None:
    """The page, its configuration and its static files (``/studio/*``)."""
    app.include_router(router)
    app.mount("/studio", StaticFiles(directory=STUDIO), name="studio")
