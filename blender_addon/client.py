"""Standard-library HTTP client for the ViewNeTI render service (contract v1, see server/API.md).

No bpy here: every call blocks, so the add-on only calls it from worker threads (or from the
synchronous paths used when Blender runs headless). Every failure becomes a `BackendError` whose
text tells the user what to do, because that text ends up verbatim in the panel.

A backend cannot freeze or flood the add-on: every call has a total deadline (its timeout; a
watchdog closes the socket of a server that trickles bytes), response bodies and event lines have
size caps (limits.py), only 2xx answers count as success (a redirect is reported, never followed),
and a rendered PNG must have the size that was asked for (read from its header before anything
decodes it).
"""

import http.client
import json
import socket
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

from . import limits

API_VERSION = "v1"
DEFAULT_URL = "http://127.0.0.1:7860"
# Render formats: stills stay lossless PNG; live previews ask for JPEG, which the backend encodes in about
# a millisecond and Blender decodes fastest (PNG stays acceptable, for older backends).
STILL_ACCEPT = "image/png"
LIVE_ACCEPT = "image/jpeg, image/png;q=0.5"


class BackendError(Exception):
    """A failure the user can act on; ``str(err)`` is the message shown in the panel."""

    def __init__(self, message, status=None, body=None):
        super().__init__(message)
        self.status = status
        self.body = body or {}


class BackendUnavailable(BackendError):
    """Nothing answered at the configured URL (refused, unreachable, timed out)."""


class BackendNotReady(BackendError):
    """The backend is up but still loading its model (HTTP 503, status "loading")."""


class Superseded(BackendError):
    """A newer live request from the same session replaced this one (HTTP 409, superseded)."""


class StreamSilent(BackendUnavailable):
    """An event stream completed no event for too long: keep-alives only, or a line that never ends
    (the caller polls the job instead)."""


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data):
    """(width, height) from a PNG's IHDR, or None if the bytes are not a PNG (nothing is decoded)."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


JPEG_SIGNATURE = b"\xff\xd8\xff"


def jpeg_size(data):
    """(width, height) from a JPEG's first start-of-frame marker, or None if the bytes are not a JPEG."""
    if not data.startswith(JPEG_SIGNATURE):
        return None
    i, n = 2, len(data)
    while i + 9 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn: height, width follow
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        i += 2 + length
    return None


def image_size(data):
    """(width, height, Blender file format) of PNG or JPEG bytes, or None for anything else (nothing decoded)."""
    size = png_size(data)
    if size is not None:
        return size[0], size[1], "PNG"
    size = jpeg_size(data)
    if size is not None:
        return size[0], size[1], "JPEG"
    return None


def check_png(data, expected=None, what="image"):
    """The PNG's size, refusing non-PNGs, a size other than `expected` and anything over MAX_SIZE."""
    if png_size(data) is None:
        raise BackendError(f"The backend's {what} was not a PNG image: check the backend's log.")
    return check_image(data, expected, what)


def check_image(data, expected=None, what="image"):
    """Like `check_png`, for PNG or JPEG (live renders come as JPEG): the size, from the header alone."""
    found = image_size(data)
    if found is None:
        raise BackendError(f"The backend's {what} was not a PNG or JPEG image: check the backend's log.")
    size = found[:2]
    if expected is not None and tuple(size) != tuple(expected):
        raise BackendError(
            f"The backend sent a {size[0]}x{size[1]} {what} for a {expected[0]}x{expected[1]} request: "
            "it is not behaving like a ViewNeTI backend. Check the URL in the add-on preferences."
        )
    if not (0 < size[0] <= limits.MAX_SIZE and 0 < size[1] <= limits.MAX_SIZE):
        raise BackendError(f"The backend sent a {size[0]}x{size[1]} {what}, larger than any render: ignored.")
    return size


def shutdown_socket(sock):
    """End every read and write on `sock` now, also one blocked in another thread (it sees the end)."""
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _Watchdog:
    """Shuts the connection's socket down at the deadline, so that no read can outlive the call's
    timeout (a socket timeout alone restarts with every byte a trickling server sends)."""

    def __init__(self, conn, seconds, sock=None):
        self.conn = conn
        # the socket once connected: http.client forgets conn.sock when a response closes the connection
        self.sock = sock
        self.fired = False
        self._timer = threading.Timer(max(0.0, seconds), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self):
        self.fired = True
        shutdown_socket(self.sock or getattr(self.conn, "sock", None))

    def cancel(self):
        self._timer.cancel()


def read_capped(response, limit, what="response"):
    """The body, refusing (BackendError) one larger than `limit` bytes, declared or not."""
    try:
        declared = int(response.getheader("content-length") or -1)
    except ValueError:
        declared = -1
    if declared > limit:
        raise BackendError(_too_large(what, limit))
    chunks, n = [], 0
    while True:
        chunk = response.read(min(256 * 1024, limit + 1 - n))
        if not chunk:
            if n < declared:  # the connection ended early (http.client returns what it got)
                raise http.client.IncompleteRead(b"".join(chunks), declared - n)
            return b"".join(chunks)
        n += len(chunk)
        if n > limit:
            raise BackendError(_too_large(what, limit))
        chunks.append(chunk)


def _too_large(what, limit):
    return (
        f"The backend's {what} is larger than {limit // (1024 * 1024)} MB, more than any ViewNeTI answer: "
        "check the URL in the add-on preferences."
    )


@dataclass
class RenderResult:
    png: bytes
    seed: int = 0
    request_id: str = ""
    timings_ms: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)  # X-Warnings: what the backend rendered despite


LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}


def is_loopback_url(url):
    """True for a backend on this machine (no Internet access involved): localhost, 127.x.x.x, [::1]."""
    url = (url or DEFAULT_URL).strip()
    host = urllib.parse.urlsplit(url if "://" in url else "http://" + url).hostname or ""
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def parse_warnings(header):
    """The X-Warnings header (a JSON array of strings) as a list; anything else is ignored."""
    try:
        value = json.loads(header or "[]")
    except ValueError:
        return []
    return [str(w) for w in value] if isinstance(value, list) else []


@dataclass
class SSEEvent:
    event: str
    data: object
    id: str = ""


class SSEParser:
    """Incremental Server-Sent Events parser (WHATWG rules): feed lines, get events.

    Kept separate from the socket so it can be tested without a server and reused whatever the
    transport delivers (whole lines, with or without CR).
    """

    def __init__(self):
        self._event = ""
        self._data = []
        self.last_id = ""

    def feed_line(self, line):
        """Consume one line; return an `SSEEvent` when a blank line completes one, else None."""
        if isinstance(line, bytes):
            line = line.decode("utf-8", errors="replace")
        line = line.rstrip("\r\n")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # comment / keep-alive
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self.last_id = value
        return None  # "retry" and unknown fields are ignored, as the spec says

    def _dispatch(self):
        if not self._data:
            self._event = ""
            return None
        raw = "\n".join(self._data)
        try:
            data = json.loads(raw)
        except ValueError:
            data = raw
        event = SSEEvent(self._event or "message", data, self.last_id)
        self._event, self._data = "", []
        return event


def parse_sse(lines):
    """Yield the events of an iterable of lines (str or bytes)."""
    parser = SSEParser()
    for line in lines:
        event = parser.feed_line(line)
        if event is not None:
            yield event
    event = parser.feed_line("")  # a stream cut right after a data line still counts
    if event is not None:
        yield event


class EventStream:
    """An open SSE response; iterate for events, `close()` from any thread to stop reading.

    With `max_silence` (seconds), a stream that completes no event for that long ends with
    `StreamSilent`, whatever it sends meanwhile: keep-alives, or one line trickled a byte at a time (a
    watchdog shuts the socket down at the deadline; a socket timeout alone restarts with every byte).
    The time the caller spends on an event does not count. One event is at most `max_line` bytes.
    """

    def __init__(self, conn, response, sock=None, max_silence=None, max_line=limits.MAX_SSE_LINE_BYTES):
        self._conn = conn
        self._response = response
        self._sock = sock  # the connection's socket: close() shuts it down to end a blocked read
        self.closed = False
        self.max_silence = max_silence  # seconds without an event (keep-alives don't count): StreamSilent
        self.max_line = max_line
        self._dog = None

    def _arm(self):
        if self.max_silence is not None:
            self._dog = _Watchdog(self._conn, self.max_silence, self._sock)
        return time.monotonic()

    def _disarm(self):
        if self._dog is not None:
            self._dog.cancel()

    def _silent(self):
        return StreamSilent(f"The job's event stream completed no event for {self.max_silence:g} s.")

    def __iter__(self):
        parser = SSEParser()
        pending = 0  # bytes of the event being assembled
        last_event = self._arm()
        try:
            while True:
                line = self._response.readline(self.max_line + 1)
                if self._dog is not None and self._dog.fired:
                    raise self._silent()
                if not line:
                    return
                pending += len(line)
                if len(line) > self.max_line or pending > self.max_line:
                    raise BackendError(_too_large("event", self.max_line))
                event = parser.feed_line(line)
                if event is not None:
                    pending = 0
                    self._disarm()
                    yield event
                    last_event = self._arm()
                elif not line.strip():
                    pending = 0
                if self.max_silence is not None and time.monotonic() - last_event > self.max_silence:
                    raise self._silent()
        except (AttributeError, ValueError, OSError, http.client.HTTPException):
            if self._dog is not None and self._dog.fired:
                raise self._silent() from None
            # close() from another thread makes the response unreadable: that is a normal end
            if self.closed:
                return
            raise
        finally:
            self._disarm()
            self.close()
            self._response.close()

    def close(self):
        """Stop reading, from any thread: a read blocked on the socket ends at once."""
        self.closed = True
        shutdown_socket(self._sock)
        try:
            self._conn.close()
        except OSError:
            pass


def _error_text(body_bytes):
    try:
        body = json.loads(body_bytes.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return "", {}
    if isinstance(body, dict):
        msg = body.get("error") or body.get("detail") or ""
        if not isinstance(msg, str):
            msg = json.dumps(msg)
        return msg, body
    return "", {}


class Client:
    """One backend address + timeout; cheap to create, safe to use from one thread at a time."""

    def __init__(self, base_url=DEFAULT_URL, timeout=30.0, token=""):
        url = (base_url or DEFAULT_URL).strip()
        if "://" not in url:
            url = "http://" + url
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BackendError(
                f"Backend URL '{base_url}' is not valid: use something like {DEFAULT_URL} "
                "(Edit > Preferences > Add-ons > ViewNeTI)."
            )
        self.base_url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._prefix = parts.path.rstrip("/")
        self.timeout = float(timeout)
        self.token = token or ""

    # -- transport ---------------------------------------------------------------------------

    def _connect(self, timeout):
        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=timeout)

    def _send(self, method, path, body=None, timeout=None, accept="application/json", watchdog=None):
        """Send a request; return (connection, response, socket) or raise a user-facing BackendError.

        The connection, the request and the response head must complete within `timeout` (the
        watchdog's deadline); the caller reads the body under the same watchdog, then cancels it."""
        timeout = self.timeout if timeout is None else timeout
        headers = {"Accept": accept}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        conn = self._connect(timeout)
        dog = _Watchdog(conn, timeout)
        if watchdog is not None:
            watchdog.append(dog)
        try:
            conn.request(method, self._prefix + path, body=data, headers=headers)
            dog.sock = conn.sock
            response = conn.getresponse()
        except ConnectionRefusedError:
            dog.cancel()
            conn.close()
            raise BackendUnavailable(
                f"No ViewNeTI backend is running at {self.base_url}. Start it "
                "(viewneti-server --port PORT, or Start Backend in the panel) "
                "or fix the URL in the add-on preferences."
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            dog.cancel()
            conn.close()
            if isinstance(exc, TimeoutError) or dog.fired:
                raise BackendUnavailable(
                    f"The backend at {self.base_url} did not answer within {timeout:g} s. It may be "
                    "busy or stuck: wait, raise the timeout in the add-on preferences, or restart it."
                ) from None
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise BackendUnavailable(
                f"Cannot reach the backend at {self.base_url} ({reason}). "
                "Check the URL in the add-on preferences and that the backend is running."
            ) from None
        if not 200 <= response.status < 300:
            try:
                payload = read_capped(response, limits.MAX_JSON_BYTES, "error answer")
            except (OSError, http.client.HTTPException, BackendError):
                payload = b""
            finally:
                dog.cancel()
                conn.close()
            if 300 <= response.status < 400:
                location = response.getheader("location") or "elsewhere"
                raise BackendError(
                    f"{self.base_url} answered {method} {path} with a redirect ({response.status} to {location}); "
                    "a ViewNeTI backend never redirects. Point the add-on preferences at the backend itself.",
                    response.status,
                )
            raise self._http_error(method, path, response.status, payload)
        if watchdog is None:
            dog.cancel()
        return conn, response, dog.sock

    def _http_error(self, method, path, status, payload):
        message, body = _error_text(payload)
        if status == 409 and body.get("superseded"):
            return Superseded(message or "superseded by a newer request", status, body)
        if status == 401:
            return BackendError(
                "The backend refused the request (401): set its access token in the add-on "
                "preferences." + (f" Server said: {message}" if message else ""),
                status,
                body,
            )
        if status == 421:  # the server's words say which address to use instead
            return BackendError(
                f"The backend at {self.base_url} refused this address (421): {message or 'not a name of the server'}. "
                "Set the Backend URL in the add-on preferences to an address it accepts.",
                status,
                body,
            )
        if status == 404 and not message:
            return BackendError(
                f"{self.base_url} answered 404 for {path}: it is not a ViewNeTI {API_VERSION} "
                "backend. Check the URL/port in the add-on preferences.",
                status,
                body,
            )
        if status == 503:
            state = body.get("status")
            if state == "failed":
                return BackendError(f"The backend could not load its model: {message or 'see its log'}", status, body)
            if state == "loading":
                return BackendNotReady("The backend is still loading its model: try again in a moment.", status, body)
            return BackendError(
                f"The backend is not ready (503): {message or 'it may be shutting down'}. Try again in a moment.",
                status,
                body,
            )
        if status >= 500:
            return BackendError(
                f"The backend failed (HTTP {status}): {message or 'no details'}. "
                "See the backend's log; restarting it may help.",
                status,
                body,
            )
        return BackendError(message or f"The backend rejected {method} {path} (HTTP {status}).", status, body)

    def _call(self, method, path, body=None, timeout=None, accept="application/json", limit=limits.MAX_JSON_BYTES):
        dogs = []
        conn, response, _sock = self._send(method, path, body, timeout, accept, watchdog=dogs)
        try:
            payload = read_capped(response, limit)
            headers = {k.lower(): v for k, v in response.getheaders()}
            return response.status, headers, payload
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if dogs and dogs[0].fired:
                timeout = self.timeout if timeout is None else timeout
                raise BackendUnavailable(
                    f"The backend at {self.base_url} did not finish its answer within {timeout:g} s. It may be "
                    "busy or stuck: wait, raise the timeout in the add-on preferences, or restart it."
                ) from None
            if isinstance(exc, TimeoutError):
                raise BackendUnavailable(
                    f"The backend at {self.base_url} stopped answering mid-response. Try again."
                ) from None
            raise BackendUnavailable(f"Connection to {self.base_url} broke: {exc}. Try again.") from None
        finally:
            for dog in dogs:
                dog.cancel()
            conn.close()

    def _json(self, method, path, body=None, timeout=None):
        status, _headers, payload = self._call(method, path, body, timeout)
        if status == 204 or not payload:
            return {}
        try:
            return json.loads(payload.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise BackendError(
                f"{self.base_url}{path} did not return JSON: is this a ViewNeTI backend? "
                "Check the URL in the add-on preferences."
            ) from None

    # -- contract ----------------------------------------------------------------------------

    def health(self, timeout=None):
        """GET /v1/health, checked for the API version this add-on speaks."""
        info = self._json("GET", "/v1/health", timeout=timeout)
        api = info.get("api") if isinstance(info, dict) else None
        if api != API_VERSION:
            raise BackendError(
                f"The backend at {self.base_url} speaks API '{api}', this add-on needs "
                f"'{API_VERSION}'. Update the add-on or the backend so that they match."
            )
        return info

    def objects(self):
        """List of object-token entries (dicts with at least 'name')."""
        return list(self._json("GET", "/v1/objects").get("objects", []))

    def delete_object(self, name):
        self._json("DELETE", "/v1/objects/" + urllib.parse.quote(name, safe=""))

    def rename_object(self, name, new_name):
        """POST /v1/objects/{name}/rename; returns the object's new entry. A refusal (409: the new name
        is taken, the object is built in, an inversion of that name runs) is the backend's own text."""
        return self._json(
            "POST", "/v1/objects/" + urllib.parse.quote(name, safe="") + "/rename", {"new_name": new_name}
        )

    def render(self, request: dict, timeout=None, accept=STILL_ACCEPT):
        """POST /v1/render; returns a `RenderResult` with the image bytes (PNG, or JPEG if `accept` prefers it)."""
        _status, headers, payload = self._call(
            "POST", "/v1/render", request, timeout, accept=accept, limit=limits.MAX_IMAGE_BYTES
        )
        camera = request.get("camera") if isinstance(request, dict) else None
        expected = (camera["width"], camera["height"]) if isinstance(camera, dict) and "width" in camera else None
        check_image(payload, expected, "render")
        try:
            timings = json.loads(headers.get("x-timings-ms", "{}"))
        except ValueError:
            timings = {}
        try:
            seed = int(headers["x-seed"] if "x-seed" in headers else request.get("seed", 0))
        except (TypeError, ValueError):
            seed = 0
        return RenderResult(
            payload, seed, headers.get("x-request-id", ""), timings, parse_warnings(headers.get("x-warnings"))
        )

    def submit_sequence(self, request):
        return self._json("POST", "/v1/jobs/sequence", request)

    def compile_shape(self, width, height, views=1):
        """POST /v1/compile: ask a compiling backend to compile a render shape in the background (renders
        at it run uncompiled, slower, until it is ready). Returns {"shape", "status"}; status "eager" means
        the backend does not compile."""
        return self._json("POST", "/v1/compile", {"width": int(width), "height": int(height), "views": int(views)})

    def submit_invert(self, request):
        try:
            return self._json("POST", "/v1/jobs/invert", request)
        except BackendError as exc:
            if exc.status == 409 and "already exists" in str(exc):  # the server's text names an HTTP route
                name = request.get("name", "")
                raise BackendError(
                    f"An object named '{name}' already exists: change Name, or select '{name}' under Object "
                    "and delete or rename it there.",
                    409,
                    exc.body,
                ) from None
            raise

    def job(self, job_id):
        return self._json("GET", "/v1/jobs/" + urllib.parse.quote(job_id, safe=""))

    def cancel(self, job_id):
        """Ask the server to stop a job; a job that already finished (409) is not an error."""
        try:
            return self._json("POST", "/v1/jobs/" + urllib.parse.quote(job_id, safe="") + "/cancel")
        except BackendError as exc:
            if exc.status == 409:
                return {"job_id": job_id, "state": "finished"}
            raise

    def get_bytes(self, path):
        """GET a binary resource by absolute path (e.g. a frame URL from an SSE event)."""
        if path.startswith(self._prefix + "/") and self._prefix:
            path = path[len(self._prefix) :]
        return self._call("GET", path, accept="*/*", limit=limits.MAX_IMAGE_BYTES)[2]

    def frame(self, job_id, frame):
        return self.get_bytes(f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}/frames/{int(frame)}")

    def events(self, job_id, timeout=None, max_silence=None):
        """Open the job's SSE stream: the headers must come within `timeout`; then `max_silence`
        (seconds) bounds the time without a complete event, however the server fills it (StreamSilent)."""
        conn, response, sock = self._send(
            "GET",
            f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}/events",
            timeout=timeout,
            accept="text/event-stream",
        )
        return EventStream(conn, response, sock, max_silence=max_silence)
