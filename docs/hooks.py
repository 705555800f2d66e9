"""MkDocs hooks: the API reference is rendered from the service's own OpenAPI document,
the home page opens with the README, and the diagrams are drawn by a Mermaid of the
site's own.

Before each build the document is taken from the app as it is assembled (on the
in-memory store, nothing started) and written to `site-openapi.json` beside
mkdocs.yml, where `docs/api.md` names it; the page therefore never drifts from
what `/docs/openapi.json` serves. The home page (`docs/index.md`) is the README's
overview, tour and troubleshooting, then its own text: one source for both. The theme
fetches Mermaid from unpkg.com as a page opens unless the page has it already: the copy
scripts/install-mermaid.sh keeps in .tools/mermaid/ is put into the site and loaded by
every page, so a site read offline draws its diagrams (without it, they read as their
source; CI, which installs it, refuses to build without it).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OPENAPI = ROOT / "site-openapi.json"
README = ROOT / "README.md"
# README's links into docs/ (`](docs/reading.md#filters)`), as the site's pages link.
_DOCS_LINK = re.compile(r"\]\(docs/")
# Where scripts/install-mermaid.sh keeps Mermaid, and where the site serves it.
MERMAID = ROOT / ".tools" / "mermaid"
MERMAID_IN_SITE = "javascripts/mermaid.min.js"
log = logging.getLogger("mkdocs.hooks")


def _mermaid() -> Path | None:
    found = sorted(MERMAID.glob("mermaid-*.min.js"))
    return found[-1] if found else None


def on_config(config: Any) -> Any:
    """Every page loads the site's own Mermaid before the theme looks for one."""
    if _mermaid() is not None:
        config.extra_javascript.insert(0, MERMAID_IN_SITE)
    elif os.environ.get("CI"):
        raise SystemExit("docs: no Mermaid in .tools/mermaid: run scripts/install-mermaid.sh")
    else:
        log.info("no Mermaid in .tools/mermaid (scripts/install-mermaid.sh): diagrams as text")
    return config


def on_post_build(config: Any) -> None:
    found = _mermaid()
    if found is not None:
        target = Path(config.site_dir) / MERMAID_IN_SITE
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(found, target)
        shutil.copyfile(MERMAID / "LICENSE", target.with_name("mermaid.LICENSE"))


def on_pre_build(config: Any) -> None:
    from app.asgi import create_app
    from app.settings import Settings

    # Assembled only to describe itself: its start-up warnings are not the build's.
    logging.disable(logging.WARNING)
    try:
        app = create_app(Settings.load({"RECORDLINE_STORE": "memory:"}))
    finally:
        logging.disable(logging.NOTSET)
    OPENAPI.write_text(json.dumps(app.litestar.openapi_schema.to_schema(), indent=1))


# The heading the OpenAPI plugin opens its Markdown with: the document's title and
# version (`# Recordline <span class="api-version">1</span>`).
_OPENAPI_TITLE = re.compile(r'^# .*<span class="api-version">.*</span>\s*$', re.M)


# Its "Servers" section: the one server is `/`, wherever the service runs, and a link to
# `/` from a page opened from the file system leads to the disk's root.
_OPENAPI_SERVERS = re.compile(r"^## Servers\n.*?(?=^## )", re.M | re.S)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """The API reference is one page under its own title: the rendered document's
    title ("Recordline 1") is dropped, so that its sections are the page's and
    show in its table of contents (which lists the sections under the page's first
    title only), and so is its list of servers. Runs after the plugins (MkDocs loads
    hooks last)."""
    if page.file.src_path == "index.md":
        return home(markdown)
    if page.file.src_path != "api.md":
        return markdown
    markdown = _OPENAPI_TITLE.sub("", markdown, count=1)
    return _OPENAPI_SERVERS.sub("", markdown, count=1)


def home(own: str) -> str:
    """The README, its links into docs/ made the site's, then the home page's own text
    (its opening comment, which says so, dropped)."""
    readme = _DOCS_LINK.sub("](", README.read_text())
    return readme.rstrip() + "\n\n" + re.sub(r"\A<!--.*?-->\s*", "", own, flags=re.S)
