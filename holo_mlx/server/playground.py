"""GET / and /playground: one static page to try localization and chat from a browser (no build step)."""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

router = APIRouter()

PAGE = Path(__file__).parent / "static" / "playground.html"


@router.get("/", include_in_schema=False)
@router.get("/playground", include_in_schema=False)
async def playground():
    return FileResponse(PAGE, media_type="text/html")
