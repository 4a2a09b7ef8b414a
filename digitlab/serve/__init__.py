"""The HTTP API and the drawing page (app.py, forms.py). Kept light: the CLI reads the defaults below
without importing FastAPI. Each limit says what it bounds; the README's server section lists them."""

MAX_UPLOAD = 4 * 1024 * 1024  # the largest request body accepted by default, in bytes (413 above)
# Decoded pixels per request, all its images together. The CLI's own cap (images.MAX_PIXELS) is 250 MP; a
# server shares its memory between clients, so it refuses more than a 12 MP photo per request (422), after
# decoding JPEGs at the 1/2, 1/4 or 1/8 scale that fits (draft mode), so larger phone photos still read.
MAX_REQUEST_PIXELS = 12_000_000
# Decoded pictures above this many pixels are box-reduced by a whole factor to fit before prepare(): its
# float working copies peak at ~40 bytes a pixel (470 MB for 12 MP RGBA), and a digit needs far fewer.
PREPARE_PIXELS = 2_000_000
# Pictures declaring more than this are decoded one at a time per worker (a 12 MP RGBA decode holds 48 MB
# twice, for EXIF rotation); smaller ones run one per core.
LARGE_PICTURE = 2_000_000
# Requests whose largest picture has at most this many pixels (JSON pixels, 28x28 uploads) are prepared on the
# event loop itself, without the hand-off to a thread and back (a fraction of a millisecond of work each).
# Larger ones (a 280x280 canvas: ~3 ms) go to the decode threads, where the decoding, OpenCV and the model
# release the GIL and use the second core: inline canvases answered fewer per second under wrk.
INLINE_PIXELS = 4096
# The model call is batched across the requests that reach it together (app.Batcher); a batch waits at most
# this long for more pictures once its first has arrived (and never past the event loop's turn).
BATCH_WINDOW_S = 0.002
QUEUE_WAIT_S = 2.0  # how long a request waits for a free decode slot before 503 (Retry-After: 1)
HEADER_TIMEOUT_S = 10  # a connection must send a whole request head within this (also closes idle keep-alives)
BODY_TIMEOUT_S = 20  # ... and its whole body within this after the head (408 after)
# Request line and headers: Granian (hyper) answers 431 once its read buffer passes this with the head still
# incomplete; it checks between reads, so heads of 40 KB pass and 60 KB are refused (measured).
MAX_HEADER_BYTES = 32 * 1024
MAX_CONNECTIONS = 4096  # open connections per worker (idle ones close after HEADER_TIMEOUT_S)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")  # Host header names accepted by default
