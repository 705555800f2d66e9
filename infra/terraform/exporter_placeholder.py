"""The exporter service until its first deploy: it waits, exporting nothing.

Terraform creates the worker pool with a public Python image running this; the
deploy workflow replaces it with Recordline's image (`recordline exporter`).
Meanwhile rows wait in Spanner, unexported, and the export lag says so.
"""

import signal
import sys
import time

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("recordline exporter placeholder: waiting for the first deploy", flush=True)
while True:
    time.sleep(3600)
