"""Standard-library HTTP client for the ViewNeTI render service (contract v1, see server/API.md).

No bpy here: every call blocks, so the add-on only calls it from worker threads (or from the
synchronous paths used when Blender runs headless). Every failure becomes a `BackendError` whose
text tells the user what to do, because that text ends up verbatim in the panel.
"""

import http.client
import json
import urllib.parse
from dataclasses import dataclass, field

API_VERSION = "v1"
DEFAULT_URL = "http://127.0.0.1:7860"


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
    """An open SSE response; iterate for events, `close()` from any thread to stop reading."""

    def __init__(self, conn, response):
        self._conn = conn
        self._response = response
        self.closed = False

    def __iter__(self):
        parser = SSEParser()
        try:
            while True:
                line = self._response.readline()
                if not line:
                    return
                event = parser.feed_line(line)
                if event is not None:
                    yield event
        except (AttributeError, ValueError, OSError, http.client.HTTPException):
            # close() from another thread makes the response unreadable: that is a normal end
            if self.closed:
                return
            raise
        finally:
            self.close()

    def close(self):
        self.closed = True
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

    def _send(self, method, path, body=None, timeout=None, accept="application/json"):
        """Send a request; return (connection, response) or raise a user-facing BackendError."""
        timeout = self.timeout if timeout is None else timeout
        headers = {"Accept": accept}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        conn = self._connect(timeout)
        try:
            conn.request(method, self._prefix + path, body=data, headers=headers)
            response = conn.getresponse()
        except ConnectionRefusedError:
            conn.close()
            raise BackendUnavailable(
                f"No ViewNeTI backend is running at {self.base_url}. Start it "
                "(viewneti-server --port PORT, or Start Backend in the panel) "
                "or fix the URL in the add-on preferences."
            ) from None
        except TimeoutError:
            conn.close()
            raise BackendUnavailable(
                f"The backend at {self.base_url} did not answer within {timeout:g} s. It may be "
                "busy or stuck: wait, raise the timeout in the add-on preferences, or restart it."
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise BackendUnavailable(
                f"Cannot reach the backend at {self.base_url} ({reason}). "
                "Check the URL in the add-on preferences and that the backend is running."
            ) from None
        if response.status >= 400:
            try:
                payload = response.read()
            except (OSError, http.client.HTTPException):
                payload = b""
            finally:
                conn.close()
            raise self._http_error(method, path, response.status, payload)
        return conn, response

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

    def _call(self, method, path, body=None, timeout=None, accept="application/json"):
        conn, response = self._send(method, path, body, timeout, accept)
        try:
            payload = response.read()
            headers = {k.lower(): v for k, v in response.getheaders()}
            return response.status, headers, payload
        except TimeoutError:
            raise BackendUnavailable(
                f"The backend at {self.base_url} stopped answering mid-response. Try again."
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise BackendUnavailable(f"Connection to {self.base_url} broke: {exc}. Try again.") from None
        finally:
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
        """POST /v1/objects/{name}/rename; returns the object's new entry."""
        try:
            return self._json(
                "POST", "/v1/objects/" + urllib.parse.quote(name, safe="") + "/rename", {"new_name": new_name}
            )
        except BackendError as exc:
            if exc.status == 409:
                raise BackendError(f"An object named '{new_name}' already exists: pick another name.", 409) from None
            raise

    def render(self, request, timeout=None):
        """POST /v1/render; returns a `RenderResult` with the PNG bytes."""
        _status, headers, payload = self._call("POST", "/v1/render", request, timeout, accept="image/png")
        if not payload.startswith(b"\x89PNG\r\n\x1a\n"):
            raise BackendError("The backend's render was not a PNG image: check the backend's log.")
        try:
            timings = json.loads(headers.get("x-timings-ms", "{}"))
        except ValueError:
            timings = {}
        try:
            seed = int(headers.get("x-seed", request.get("seed", 0)))
        except (TypeError, ValueError):
            seed = 0
        return RenderResult(
            payload, seed, headers.get("x-request-id", ""), timings, parse_warnings(headers.get("x-warnings"))
        )

    def submit_sequence(self, request):
        return self._json("POST", "/v1/jobs/sequence", request)

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
        return self._call("GET", path, accept="*/*")[2]

    def frame(self, job_id, frame):
        return self.get_bytes(f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}/frames/{int(frame)}")

    def events(self, job_id, timeout=None):
        """Open the job's SSE stream; the socket timeout bounds the silence between two lines."""
        conn, response = self._send(
            "GET",
            f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}/events",
            timeout=timeout,
            accept="text/event-stream",
        )
        return EventStream(conn, response)
