"""MkDocs hook: the API reference is rendered from the service's own OpenAPI document.

Before each build the document is taken from the app as it is assembled (on the
in-memory store, nothing started) and written to `site-openapi.json` beside
mkdocs.yml, where `docs/api.md` names it; the page therefore never drifts from
what `/docs/openapi.json` serves.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

OPENAPI = Path(__file__).resolve().parent.parent / "site-openapi.json"


def on_pre_build(config: Any) -> None:
    from app.asgi import create_app
    from app.settings import Settings

    # Assembled only to describe itself: its start-up warnings are not the build's.
    logging.disable(logging.WARNING)
    try:
        app = create_app(Settings.load({"RECORDLINE_STORE": "memory:"}))
    finally:
        logging.disable(logging.NOTSET)
    OPENAPI.write_text(json.dumps(app.openapi_schema.to_schema(), indent=1))
