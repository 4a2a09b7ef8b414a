"""The HTTP API and the drawing page (app.py, forms.py). Kept light: the CLI reads the defaults below
without importing FastAPI. Each limit says what it bounds; the README's server section lists them."""

MAX_UPLOAD = 4 * 1024 * 1024  # the largest request body accepted by default, in bytes (413 above)
# Decoded pixels per request, all its images together. The CLI's own cap (images.MAX_PIXELS) is 50 MP; a
# server shares its memory between clients, so it refuses more than a 12 MP photo per request (422), after
# decoding JPEGs at the 1/2, 1/4 or 1/8 scale that fits (draft mode), so larger phone photos still read.
MAX_REQUEST_PIXELS = 12_000_000
# Pictures above this many pixels are decoded and prepared one at a time per worker: preparing a 12 MP RGBA
# picture peaks at ~275 MB, so two at once would break the 300 MB bound; small ones run one per core.
LARGE_PICTURE = 2_000_000
QUEUE_WAIT_S = 2.0  # how long a request waits for a free decode slot before 503 (Retry-After: 1)
HEADER_TIMEOUT_S = 10  # a connection must send a whole request head within this (also closes idle keep-alives)
BODY_TIMEOUT_S = 20  # ... and its whole body within this after the head (408 after)
MAX_HEADER_BYTES = 64 * 1024  # request line and headers together (431 above)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")  # Host header names accepted by default
