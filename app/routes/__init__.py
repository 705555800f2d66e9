"""The HTTP routes, in the web layer: each decodes a request, calls one service
(`app.ingest`, `app.query`) and lets the error table (`app.problems`) choose
the status. `create_app` puts each list behind the guards of who may call it.
"""
