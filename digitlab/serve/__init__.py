"""The HTTP API and the drawing page (app.py). Kept light: the CLI reads the default below without
importing FastAPI."""

MAX_UPLOAD = 4 * 1024 * 1024  # the largest request body accepted by default, in bytes
