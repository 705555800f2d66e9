"""HTTP as this service speaks it, below its routes: what a connection may cost
(`limits`), the content codings a client accepts (`codings`) and HEAD answered
wherever GET is (`head`). Design: docs/security.md and docs/api.md."""
