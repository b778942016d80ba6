"""Start Backend / Stop Backend: a local backend process this Blender session started and watches.

The start command comes from the preferences; with Per-Launch Token on it gets ``--token auto
--token-file FILE`` and the add-on reads the token from that file (the server writes it, mode 0600,
before it listens). The process's output goes to ``backend.log``, private to the user (0600, in the
add-on's per-user folder: the token would be in it if the server printed it). While the process boots,
the :class:`LocalBackend` part of the session checks ``/v1/health`` until it answers, and reports an
exit. Only the process started here is ever stopped.
"""

import os
import shlex
import stat
import subprocess
import threading
import time
import urllib.parse

import bpy

from . import connection
from .client import BackendNotReady, BackendUnavailable
from .properties import prefs
from .session import SESSION, TICK_SLOW, ensure_timer, run_async
from .status import report_error, scene_named, set_status

LOG_NAME = "backend.log"


class LocalBackend:
    """The started process as a part of the session: the process, its log and token, the boot watch."""

    def __init__(self, proc, log_path, scene_name, token_file=""):
        self.proc = proc
        self.log_path = log_path
        self.scene_name = scene_name  # where to report; "" once the process has exited
        self.token_file = token_file  # where the process writes its --token auto token ("" without)
        self.token = ""  # that token, once read
        self.next_check = 0.0
        self.checking = False

    def running(self):
        return self.proc.poll() is None

    def read_token(self):
        """The per-launch token, once the process has written it (it does so before it listens)."""
        if self.token or not self.token_file:
            return self.token
        try:
            with open(self.token_file, encoding="ascii") as f:
                self.token = f.read().strip()
        except (OSError, ValueError):
            return ""
        return self.token

    def step(self):
        """While the backend boots: report when it answers or when it died."""
        scene = scene_named(self.scene_name)
        if scene is None or self.checking:
            return
        if self.proc.poll() is not None:
            SESSION.backend = None
            set_status(scene, f"The backend exited (code {self.proc.returncode}): see {self.log_path}", "DOWN")
            return
        if scene.viewneti.backend_state == "OK" or time.monotonic() < self.next_check:
            return
        self.next_check = time.monotonic() + 1.0
        if self.token_file and not self.read_token():
            return  # it has not written its per-launch token yet: still starting
        self.checking = True
        client = connection.make_client()

        def done(value, error):
            self.checking = False
            target = scene_named(self.scene_name)
            if target is None:
                return
            if error is None:
                connection.apply_backend(target, *value)
            elif isinstance(error, BackendNotReady):
                set_status(target, "The backend is up and loading its model…")
            elif not isinstance(error, BackendUnavailable):  # refused = still booting; anything else matters
                report_error(target, error)

        run_async(lambda: connection.fetch_backend(client), done)

    def interval(self):
        return TICK_SLOW if self.scene_name else None

    def shutdown(self):
        """Nothing: the process outlives a file load (Stop Backend or unregister ends it)."""


def backend_running():
    return SESSION.backend is not None and SESSION.backend.running()


def user_folder():
    """The add-on's per-user folder (token files, backend.log), readable by this user only (0700).

    An extension has its own under Blender's user resources; a legacy add-on uses Blender's per-user
    datafiles folder, never a shared temp folder (others could read the log or plant a link there)."""
    try:
        folder = bpy.utils.extension_path_user(__package__, create=True)
    except (ValueError, RuntimeError):  # loaded as a legacy add-on: no extension folder
        folder = bpy.utils.user_resource("DATAFILES", path="viewneti", create=True)
    if os.name == "posix":  # Windows keeps a user's AppData private by itself
        info = os.lstat(folder)
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise ValueError(f"{folder} is not a folder of yours: remove it so that the add-on can create its own.")
        if stat.S_IMODE(info.st_mode) & 0o077:
            os.chmod(folder, 0o700)
    return folder


def open_private_log(path):
    """``path`` opened for appending, readable and writable by this user only (0600, also if it existed
    with wider permissions); never through a symbolic link."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        if os.name == "posix":
            os.fchmod(fd, 0o600)
        return os.fdopen(fd, "ab")
    except BaseException:
        os.close(fd)
        raise


def with_token_auto(args, token_file):
    """The start command plus '--token auto --token-file FILE', unless it chooses its own token."""
    if any(a == "--token" or a.startswith("--token=") for a in args):
        return args, ""
    return [*args, "--token", "auto", "--token-file", token_file], token_file


def start_backend(scene):
    """Start the configured backend command; the session watches it until /v1/health answers."""
    p = prefs()
    if backend_running():
        raise ValueError("The backend started from Blender is already running.")
    command = p.backend_command.strip()
    if not command:
        raise ValueError("Set the backend's start command in the add-on preferences first.")
    port = urllib.parse.urlsplit(p.backend_url if "://" in p.backend_url else "http://" + p.backend_url).port or 7860
    args = shlex.split(command.replace("{port}", str(port)))
    folder = user_folder()
    token_file = ""
    if getattr(p, "backend_token_auto", True):
        token_file = os.path.join(folder, f"backend-{port}.token")
        try:
            os.remove(token_file)  # never read a previous launch's token
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ValueError(f"Could not remove the old token file {token_file} ({exc}).") from None
        args, token_file = with_token_auto(args, token_file)
    workdir = bpy.path.abspath(p.backend_workdir) if p.backend_workdir else None
    path = os.path.join(folder, LOG_NAME)
    with open_private_log(path) as log:
        try:
            proc = subprocess.Popen(
                args,
                cwd=workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=os.name == "posix",
            )
        except OSError as exc:
            raise ValueError(
                f"Could not start the backend ({exc}): check the start command in the preferences."
            ) from None
    SESSION.backend = LocalBackend(proc, path, scene.name, token_file)
    set_status(scene, f"Starting the backend (log: {path})…", "UNKNOWN")
    ensure_timer()


def stop_backend():
    """Terminate the backend process this session started (never any other process)."""
    launched, SESSION.backend = SESSION.backend, None
    if launched is None or launched.proc.poll() is not None:
        return False
    proc = launched.proc
    proc.terminate()

    def reap():
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    threading.Thread(target=reap, name="viewneti-reap", daemon=True).start()
    return True
