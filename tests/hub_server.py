"""A stand-in for the Hugging Face Hub on loopback, serving what huggingface_hub's
downloads call, as the Hub answers it:

- GET /api/models/OWNER/REPO/tree/REVISION: the repository's files as JSON (list_repo_files);
- HEAD and GET /OWNER/REPO/resolve/REVISION/PATH: a file, with the headers hf_hub_download
  checks (ETag, X-Repo-Commit, Content-Length) and byte ranges (Range: bytes=N-, answered
  206 with Content-Range) for resuming;
- 404 with X-Error-Code RepoNotFound or EntryNotFound, as the Hub says which is missing;
- for a gated repository, 401 (no token) or 403 (a token not granted access) with X-Error-Code
  GatedRepo, unless the request carries a granted token as "Authorization: Bearer TOKEN".

Every request is recorded (method, path, headers). `cut_once` maps files to a byte count:
their first GET stops after that many bytes of the body and drops the connection, as a
broken transfer would. `stall_once` does the same but holds the connection open, sending
nothing more, until `release` is set, as a slow network would while the user gives up.
"""
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


class StandInHub:
    def __init__(self, repos, gated=None):
        """repos: {"owner/name": {"path/in/repo": bytes}}; gated: {"owner/name": token}, the
        gated repositories and the token that has been granted access to each."""
        self.repos = repos
        self.gated = gated or {}
        self.requests = []
        self.cut_once = {}
        self.stall_once = {}
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self):
        host, port = self._server.server_address
        return f"http://{host}:{port}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def record(self, method, path, headers):
        with self._lock:
            self.requests.append((method, path, {k.lower(): v for k, v in headers.items()}))

    def gets(self, filename):
        """The headers of every GET of `filename`'s content."""
        return [h for m, p, h in self.requests if m == "GET" and p.endswith("/" + filename)
                and "/resolve/" in p]


def commit_of(repo):
    return hashlib.sha1(repo.encode()).hexdigest()


def _handler(hub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):   # keep test output clean
            pass

        def do_HEAD(self):
            self._serve(body=False)

        def do_GET(self):
            self._serve(body=True)

        def _serve(self, body):
            path = unquote(urlsplit(self.path).path)
            hub.record(self.command, path, dict(self.headers))
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "tree":
                repo, name = "/".join(parts[2:4]), None
            elif len(parts) >= 5 and parts[2] == "resolve":
                repo, name = "/".join(parts[:2]), "/".join(parts[4:])
            else:
                return self._error(404, None)
            if repo in hub.gated and not self._granted(hub.gated[repo]):
                return
            if name is None:
                return self._tree(repo, body)
            self._file(repo, name, body)

        def _granted(self, token):
            """Whether the request may read a gated repository; if not, answers it."""
            given = self.headers.get("Authorization")
            if given == f"Bearer {token}":
                return True
            self._error(401 if given is None else 403, "GatedRepo")
            return False

        def _tree(self, repo, body):
            if repo not in hub.repos:
                return self._error(404, "RepoNotFound")
            files = hub.repos[repo]
            # A recursive listing names the folders too, as the Hub's does.
            folders = sorted({"/".join(p.split("/")[:depth]) for p in files
                              for depth in range(1, p.count("/") + 1)})
            listing = [{"type": "directory", "path": p, "oid": commit_of(p)} for p in folders]
            listing += [{"type": "file", "path": p, "size": len(data),
                         "oid": hashlib.sha1(data).hexdigest()} for p, data in files.items()]
            self._send(200, json.dumps(listing).encode(), {"Content-Type": "application/json"},
                       body)

        def _file(self, repo, name, body):
            if repo not in hub.repos:
                return self._error(404, "RepoNotFound")
            data = hub.repos[repo].get(name)
            if data is None:
                return self._error(404, "EntryNotFound", {"X-Repo-Commit": commit_of(repo)})
            headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                       "X-Repo-Commit": commit_of(repo), "Accept-Ranges": "bytes",
                       "Content-Type": "application/octet-stream"}
            status, start = 200, 0
            wanted = self.headers.get("Range")
            if wanted and body:
                start = int(wanted.removeprefix("bytes=").split("-")[0])
                status = 206
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            payload = data[start:]
            if body and start == 0 and name in hub.cut_once:
                return self._cut(payload, headers, hub.cut_once.pop(name))
            if body and start == 0 and name in hub.stall_once:
                return self._cut(payload, headers, hub.stall_once.pop(name), hub.release)
            self._send(status, payload, headers, body)

        def _cut(self, payload, headers, sent, release=None):
            self.send_response(200)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload[:sent])
            self.wfile.flush()
            if release is not None:
                release.wait()
            self.close_connection = True

        def _error(self, status, code, extra=None):
            headers = dict(extra or {})
            if code:
                headers["X-Error-Code"] = code
            message = json.dumps({"error": code or "Not Found"}).encode()
            self._send(status, message, {**headers, "Content-Type": "application/json"},
                       self.command != "HEAD")

        def _send(self, status, payload, headers, body):
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if body:
                self.wfile.write(payload)

    return Handler
