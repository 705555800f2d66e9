"""Who may push and who may read.

`oidc` verifies Google-signed ID tokens (keys and verdicts cached, so a push
costs a dictionary look-up); `access` decides what a verified identity may do;
`guards` installs both in the app, as `create_app` is told by the settings.
"""
