"""A stand-in for the Hugging Face Hub on 127.0.0.1, serving one folder as a model repository.

It answers what huggingface_hub 2.4 asks while downloading: the model info at a revision
(`/api/models/<repo>/revision/<rev>`), the recursive tree listing with LFS metadata
(`/api/models/<repo>/tree/<rev>`), and `/<repo>/resolve/<rev>/<path>` with the headers
`hf_hub_download` checks: X-Repo-Commit, ETag, Content-Length, and for LFS files a redirect to the
blob store with X-Linked-Size / X-Linked-ETag. Byte ranges are honoured. It never sends Xet headers,
so no client takes the Xet path.

Faults a test switches on: `drop_after[path] = n` (the next transfer of that file stops after n
bytes and the connection is closed), `corrupt_once` (the next transfer of that file has one byte
flipped), `gated` (401 GatedRepo on /resolve unless the request carries a token in
`accepted_tokens`). `log` records every request.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pth")


@dataclass
class Logged:
    method: str
    path: str  # without the query
    range: str | None
    status: int
    body_bytes: int  # bytes of the body actually sent
    authorization: str | None


@dataclass
class FakeHub:
    repo_id: str
    folder: Path
    gated: bool = False
    accepted_tokens: set[str] = field(default_factory=set)
    drop_after: dict[str, int] = field(default_factory=dict)
    corrupt_once: set[str] = field(default_factory=set)
    log: list[Logged] = field(default_factory=list)

    def __post_init__(self):
        self.files = {p.relative_to(self.folder).as_posix(): p.read_bytes()
                      for p in sorted(self.folder.rglob("*")) if p.is_file()}
        self.sha256 = {path: hashlib.sha256(data).hexdigest() for path, data in self.files.items()}
        self.commit = hashlib.sha1("".join(sorted(self.sha256.values())).encode()).hexdigest()
        self._lock = threading.Lock()
        self._servers: list[_Server] = []

    # --- life cycle --------------------------------------------------------------------------

    def __enter__(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        # Two origins, like the hub and its blob store: huggingface_hub reads a file's metadata on the
        # redirect to another origin and does not follow it, and httpx drops the token there.
        for _ in ("hub", "blob store"):
            server = _Server(("127.0.0.1", 0), Handler)
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
            self._servers.append(server)
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers = []

    @property
    def url(self) -> str:
        host, port = self._servers[0].server_address[:2]
        return f"http://{host}:{port}"

    @property
    def blob_url(self) -> str:
        host, port = self._servers[1].server_address[:2]
        return f"http://{host}:{port}/blobs"

    # --- what tests read ---------------------------------------------------------------------

    def transfers(self, path: str) -> list[Logged]:
        """GETs that sent (part of) a file's content, by repository path."""
        blob = f"/blobs/{self.sha256[path]}"
        resolve = f"/{self.repo_id}/resolve/"
        return [entry for entry in self.log if entry.method == "GET" and (
            entry.path == blob or (entry.path.startswith(resolve) and entry.path.endswith("/" + path)
                                   and entry.status in (200, 206)))]

    def bytes_sent(self, path: str) -> int:
        return sum(entry.body_bytes for entry in self.transfers(path))

    # --- the repository as the hub describes it ----------------------------------------------

    def is_lfs(self, path: str) -> bool:
        return path.endswith(LFS_SUFFIXES)

    def git_blob_id(self, path: str) -> str:
        data = self._pointer(path) if self.is_lfs(path) else self.files[path]
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    def _pointer(self, path: str) -> bytes:
        return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256[path]}\n"
                f"size {len(self.files[path])}\n").encode()

    def info(self) -> dict:
        return {"_id": "0" * 24, "id": self.repo_id, "modelId": self.repo_id, "sha": self.commit,
                "private": False, "gated": "manual" if self.gated else False, "disabled": False,
                "tags": ["diffusers", "safetensors"], "siblings": [{"rfilename": p} for p in self.files]}

    def tree(self) -> list[dict]:
        folders = sorted({p.rsplit("/", 1)[0] for p in self.files if "/" in p})
        entries = [{"type": "directory", "oid": "0" * 40, "size": 0, "path": f} for f in folders]
        for path, data in self.files.items():
            entry = {"type": "file", "oid": self.git_blob_id(path), "size": len(data), "path": path}
            if self.is_lfs(path):
                entry["lfs"] = {"oid": self.sha256[path], "size": len(data), "pointerSize": len(self._pointer(path))}
            entries.append(entry)
        return entries


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # clients hang up on purpose: a cancel
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeHub

    def log_message(self, *args):  # quiet: the test reads `fake.log` instead
        pass

    def do_HEAD(self):
        self._route(head=True)

    def do_GET(self):
        self._route(head=False)

    def _route(self, head: bool) -> None:
        fake = self.fake
        path = unquote(urlsplit(self.path).path)
        api = f"/api/models/{fake.repo_id}"
        resolve = re.fullmatch(rf"/{re.escape(fake.repo_id)}/resolve/([^/]+)/(.+)", path)
        if path == api or path.startswith(api + "/revision/"):
            if self._revision_ok(path, path.removeprefix(api + "/revision/") if "/revision/" in path else "main"):
                self._json(path, fake.info(), head)
        elif path.startswith(api + "/tree/"):
            if self._revision_ok(path, path.removeprefix(api + "/tree/").split("/")[0]):
                self._json(path, fake.tree(), head)
        elif resolve:
            self._resolve(path, resolve[1], resolve[2], head)
        elif path.startswith("/blobs/"):
            by_sha = {sha: p for p, sha in fake.sha256.items()}
            name = by_sha.get(path.removeprefix("/blobs/"))
            if name is None:
                self._error(path, 404, "EntryNotFound", head)
            else:
                self._content(path, name, head, {"ETag": f'"{fake.sha256[name]}"'})
        else:
            self._error(path, 404, "RepoNotFound", head)

    def _revision_ok(self, path: str, revision: str) -> bool:
        if revision in ("main", self.fake.commit):
            return True
        self._error(path, 404, "RevisionNotFound", False)
        return False

    def _resolve(self, path: str, revision: str, name: str, head: bool) -> None:
        fake = self.fake
        if not self._revision_ok(path, revision):
            return
        if fake.gated and self._token() not in fake.accepted_tokens:
            self._error(path, 401, "GatedRepo", head, "Access to model is restricted. You must have access to it "
                                                      "and be authenticated to access it. Please log in.")
            return
        if name not in fake.files:
            self._error(path, 404, "EntryNotFound", head)
            return
        headers = {"X-Repo-Commit": fake.commit, "ETag": f'"{fake.git_blob_id(name)}"'}
        if fake.is_lfs(name):
            # Like the hub: LFS content comes from the blob store, the metadata rides on the redirect.
            headers |= {"Location": f"{fake.blob_url}/{fake.sha256[name]}", "X-Linked-Size": str(len(fake.files[name])),
                        "X-Linked-ETag": f'"{fake.sha256[name]}"', "Content-Length": "0"}
            self._send(path, 302, headers, b"", head)
        else:
            self._content(path, name, head, headers)

    def _content(self, path: str, name: str, head: bool, headers: dict) -> None:
        fake = self.fake
        data = fake.files[name]
        start, status = 0, 200
        requested = self.headers.get("Range")
        if requested:
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", requested.strip())
            start = int(match[1])
            end = int(match[2]) if match[2] else len(data) - 1
            if start >= len(data):
                self._send(path, 416, {"Content-Range": f"bytes */{len(data)}", "Content-Length": "0"}, b"", head)
                return
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start:end + 1], 206
        headers |= {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if head:
            self._send(path, status, headers | {"Content-Length": str(len(data))}, b"", head=True)
            return
        with fake._lock:
            drop = fake.drop_after.pop(name, None)
            corrupt = name in fake.corrupt_once
            fake.corrupt_once.discard(name)
        if corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        if drop is not None:
            # Announce the whole body, send part of it, hang up: a connection lost mid-file.
            self._send(path, status, headers | {"Content-Length": str(len(data))}, data[:drop], head=False)
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._send(path, status, headers | {"Content-Length": str(len(data))}, data, head=False)

    def _token(self) -> str | None:
        value = self.headers.get("Authorization", "")
        return value.removeprefix("Bearer ") if value.startswith("Bearer ") else None

    def _json(self, path: str, data, head: bool) -> None:
        body = json.dumps(data).encode()
        self._send(path, 200, {"Content-Type": "application/json", "Content-Length": str(len(body))}, body, head)

    def _error(self, path: str, status: int, code: str, head: bool, message: str | None = None) -> None:
        body = json.dumps({"error": message or code}).encode()
        headers = {"X-Error-Code": code, "Content-Type": "application/json", "Content-Length": str(len(body))}
        if message:
            headers["X-Error-Message"] = message
        if code == "EntryNotFound":
            headers["X-Repo-Commit"] = self.fake.commit
        self._send(path, status, headers, body, head)

    def _send(self, path: str, status: int, headers: dict, body: bytes, head: bool) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        sent = 0
        if not head and body:
            try:
                self.wfile.write(body)
                self.wfile.flush()
                sent = len(body)
            except OSError:
                pass
        self.fake.log.append(Logged(self.command, path, self.headers.get("Range"), status, sent,
                                    self.headers.get("Authorization")))
