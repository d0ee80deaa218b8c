"""Models on disk: download a published one from the hub, import a folder, list them, remove one.

A download goes file by file into `<models>/<name>/`, each file through `<file>.incomplete`:

- The hub's tree listing at one pinned commit says which files exist, their sizes and their hashes
  (sha256 for LFS files, git's blob sha1 for the rest), so every file is verified once it is on disk,
  and a file that does not match is fetched again.
- A partial file is resumed with an HTTP Range request, after a dropped connection, a cancel or a
  restart of the app. huggingface_hub 2.4's `hf_hub_download` resumes only within one call: it
  writes to a per-process temporary name and deletes it on any failure. So the transfer loop is ours;
  huggingface_hub still does the hub API, the URLs, the token and the HTTP client.
- Only what the engine loads is fetched: `model_index.json` and the pipeline's component folders,
  safetensors only, one weight variant per component, stored under the plain names (the variant tag
  dropped) so that every loader finds it without being told the variant; and the license text.

The download's state (`.sana-studio-download.json` in the model folder) records the commit and each
file's hash; the model counts as installed once that state says complete. Imported folders stay
where they are: the manager keeps their path and never deletes them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import httpx2
import platformdirs
from huggingface_hub import HfApi, RepoFile, constants, hf_hub_url
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, OfflineModeIsEnabled, RevisionNotFoundError
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from .catalog import CATALOG, PublishedModel, find_published
from .errors import CheckpointError, SanaStudioError
from .model import COMPONENTS, check_model_folder

APP_NAME = "sana-studio"  # the same folder as the app's settings (app/settings.py) and the installers
STATE_FILE = ".sana-studio-download.json"
IMPORTS_FILE = "imported.json"
PARTIAL_SUFFIX = ".incomplete"
NOT_LOADED = (".bin", ".pth", ".pt", ".ckpt", ".msgpack", ".h5", ".onnx", ".gguf")  # duplicates of the safetensors
CHUNK = 8 << 20  # read size while hashing
TIMEOUT = 30.0
RETRIES = 4  # dropped connections in a row, without a byte received, before giving up
SPACE_MARGIN = 64 << 20

# NAME[.VARIANT][-0000k-of-0000n].safetensors and NAME.safetensors.index[.VARIANT].json (diffusers' names)
WEIGHT_FILE = re.compile(r"^[^.]+(?:\.(?P<variant>\w+))?(?:-\d{5}-of-\d{5})?\.safetensors$")
WEIGHT_INDEX = re.compile(r"^[^.]+\.safetensors\.index(?:\.(?P<variant>\w+))?\.json$")
MODEL_NAME = re.compile(r"^[\w][\w .\-]*$")


class DownloadError(SanaStudioError):
    """A download that could not finish. What was fetched stays; downloading again resumes it."""


class HubUnreachableError(DownloadError):
    """No connection to the model hub: offline, a proxy or DNS problem, or HF_HUB_OFFLINE set."""


class HubAccessError(DownloadError):
    """The hub wants a token, or a token that has accepted the model's license (401/403)."""


class NotEnoughSpaceError(DownloadError):
    """Checked before the first byte: `needed` and `free` in bytes, for the app to show."""

    def __init__(self, message: str, needed: int, free: int):
        super().__init__(message)
        self.needed, self.free = needed, free


class DownloadCancelled(SanaStudioError):
    """The caller's cancel event was set. Partial files stay, so the next download resumes."""


@dataclass(frozen=True)
class RemoteFile:
    repo_path: str  # as the repository names it
    local_path: str  # where it goes in the model folder: the variant tag dropped from the entry file
    size: int
    sha256: str | None  # LFS files
    git_sha1: str  # the rest (git's blob id)


@dataclass(frozen=True)
class DownloadProgress:
    model: str
    file: str  # the repository file being fetched or verified
    done_bytes: int  # of the whole model, counting what was already on disk
    total_bytes: int
    speed: float  # bytes per second over the last few seconds
    eta: float | None  # seconds left at that speed; None while there is no speed to go by
    verifying: bool = False  # hashing a file on disk rather than fetching it


@dataclass(frozen=True)
class InstalledModel:
    name: str
    path: Path
    size_bytes: int  # on disk, partial files included
    source: str  # "download", "import" (a folder elsewhere, never deleted) or "folder" (put there by hand)
    ready: bool = True  # False: a download that stopped part way, or an imported folder that is gone
    repo_id: str | None = None
    revision: str | None = None


def default_models_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)) / "models"


def free_space(path: Path) -> int:
    """Free bytes on the disk that holds `path` (or its nearest existing parent)."""
    for folder in (path, *path.parents):
        if folder.exists():
            return shutil.disk_usage(folder).free
    return shutil.disk_usage(Path.cwd()).free


def human_size(count: float) -> str:
    """Decimal units, as the hub shows sizes: "9.7 GB"."""
    units = ("B", "KB", "MB", "GB", "TB")
    index = 0
    while count >= 1000 and index < len(units) - 1:
        count /= 1000
        index += 1
    return f"{count:.0f} B" if index == 0 else f"{count:.1f} {units[index]}"


class ModelManager:
    """Published and imported SANA models under one models folder (default: the user data dir)."""

    def __init__(
        self,
        models_dir: str | Path | None = None,
        *,
        endpoint: str | None = None,
        token: str | bool | None = None,
        catalog: tuple[PublishedModel, ...] = CATALOG,
    ):
        """`endpoint` defaults to huggingface_hub's (HF_ENDPOINT); `token` None means the token that
        huggingface_hub finds itself (HF_TOKEN, or `hf auth login`)."""
        self.models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
        self.endpoint = endpoint
        self.token = token
        self.catalog = catalog

    # --- what is there -----------------------------------------------------------------------

    def available(self) -> tuple[PublishedModel, ...]:
        return self.catalog

    def installed(self) -> list[InstalledModel]:
        found = []
        if self.models_dir.is_dir():
            for folder in sorted(self.models_dir.iterdir()):
                if folder.is_dir() and not folder.name.startswith("."):
                    model = self._describe(folder)
                    if model is not None:
                        found.append(model)
        for name, path in sorted(self._imports().items()):
            folder = Path(path)
            found.append(InstalledModel(name, folder, _size_on_disk(folder), "import", ready=folder.is_dir()))
        return found

    # --- download ----------------------------------------------------------------------------

    def download(
        self,
        name: str,
        on_progress: Callable[[DownloadProgress], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> InstalledModel:
        """Fetch a published model, or resume/repair one fetched before; return it installed.

        `on_progress` is called from this thread; run one download per model at a time. Raises
        HubUnreachableError, HubAccessError, NotEnoughSpaceError, DownloadError, DownloadCancelled
        soon after `cancel` is set, or CheckpointError/ConfigError if the files do not make a model
        the engine can load.
        """
        model = find_published(name, self.catalog)
        cancel = cancel or threading.Event()
        folder = self.models_dir / model.name
        state = _read_json_or_none(folder / STATE_FILE)
        if state is None and folder.is_dir() and any(folder.iterdir()):
            raise SanaStudioError(f"{folder} exists and was not downloaded here; remove or rename it first")
        with self._hub_errors(model, folder):
            commit, files = self._listing(model, state["revision"] if state else None)
            self._check_space(model, folder, files)
            folder.mkdir(parents=True, exist_ok=True)
            self._write_state(folder, model, commit, files, complete=False)
            progress = _Progress(model.name, sum(f.size for f in files), on_progress)
            for file in files:
                self._fetch_verified(model, commit, folder, file, progress, cancel)
        check_model_folder(folder)
        self._write_state(folder, model, commit, files, complete=True)
        return self._describe(folder)

    def _listing(self, model: PublishedModel, revision: str | None) -> tuple[str, list[RemoteFile]]:
        """The commit to fetch (the one a resumed download started from) and the files to fetch."""
        api = HfApi(endpoint=self.endpoint, token=self.token, library_name=APP_NAME)
        try:
            commit = api.model_info(model.repo_id, revision=revision or "main", timeout=TIMEOUT).sha
        except RevisionNotFoundError:  # the commit was rewritten away: start again from main
            commit = api.model_info(model.repo_id, revision="main", timeout=TIMEOUT).sha
        entries = [e for e in api.list_repo_tree(model.repo_id, revision=commit, recursive=True)
                   if isinstance(e, RepoFile)]
        files = select_files(entries, model.variant)
        folders = {f.local_path.partition("/")[0] for f in files}
        missing = [name for name in ("model_index.json", *COMPONENTS) if name not in folders]
        if missing:
            raise DownloadError(f"{model.repo_id} is not a SANA model in the diffusers layout "
                                f"(no {', '.join(missing)} at commit {commit[:12]})")
        return commit, files

    def _check_space(self, model: PublishedModel, folder: Path, files: list[RemoteFile]) -> None:
        needed = 0
        for file in files:
            if not (folder / file.local_path).is_file():
                partial = _partial_path(folder / file.local_path)
                needed += file.size - (partial.stat().st_size if partial.is_file() else 0)
        free = free_space(folder)
        if needed + SPACE_MARGIN > free:
            raise NotEnoughSpaceError(
                f"{model.title} needs {human_size(needed + SPACE_MARGIN)} of free disk space in "
                f"{self.models_dir}; {human_size(free)} are free", needed + SPACE_MARGIN, free,
            )

    def _fetch_verified(self, model, commit, folder, file: RemoteFile, progress, cancel) -> None:
        target = folder / file.local_path
        if target.is_file():
            progress.start(file, target.stat().st_size, verifying=True)
            if target.stat().st_size == file.size and _matches_hub(target, file, cancel):
                progress.done(file.size)
                return
            target.unlink()  # corrupt or stale: fetched again below
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = _partial_path(target)
        url = hf_hub_url(model.repo_id, file.repo_path, revision=commit, endpoint=self.endpoint)
        for _ in range(2):
            self._fetch(url, partial, file, progress, cancel)
            progress.start(file, file.size, verifying=True)
            if _matches_hub(partial, file, cancel):
                os.replace(partial, target)
                progress.done(file.size)
                return
            partial.unlink()
        raise DownloadError(f"{file.repo_path}: what the hub sent twice does not match its checksum; try again later")

    def _fetch(self, url: str, partial: Path, file: RemoteFile, progress, cancel) -> None:
        """Bring `partial` to the file's size, resuming after dropped connections."""
        failures = 0
        while True:
            have = partial.stat().st_size if partial.is_file() else 0
            if have > file.size:
                partial.unlink()
                have = 0
            if have == file.size:
                return
            if failures:
                if failures >= RETRIES:
                    raise DownloadError(f"{file.repo_path}: the hub keeps ending the transfer early; try again later")
                if cancel.wait(min(0.25 * 2**failures, 4.0)):
                    raise DownloadCancelled(f"download of {file.repo_path} cancelled")
            progress.start(file, have)
            try:
                self._stream(url, partial, have, progress, cancel)
            except (httpx2.RemoteProtocolError, httpx2.NetworkError, httpx2.TimeoutException):
                if failures + 1 >= RETRIES and not _grew(partial, have):
                    raise
            failures = 0 if _grew(partial, have) else failures + 1

    def _stream(self, url: str, partial: Path, have: int, progress, cancel) -> None:
        headers = build_hf_headers(token=self.token, library_name=APP_NAME)
        if have:
            headers["Range"] = f"bytes={have}-"
        with get_session().stream("GET", url, headers=headers, timeout=TIMEOUT, follow_redirects=True) as response:
            if response.status_code >= 400:
                response.read()
                hf_raise_for_status(response)
            if have and response.status_code != 206:  # the Range was ignored: the whole file follows
                have = 0
                progress.start(progress.file, 0)
            with partial.open("r+b" if have else "wb") as handle:
                handle.seek(have)
                handle.truncate()
                for chunk in response.iter_bytes():  # as received: a dropped connection loses none of it
                    if cancel.is_set():
                        raise DownloadCancelled(f"download of {progress.file.repo_path} cancelled")
                    handle.write(chunk)
                    progress.advance(len(chunk))

    @contextmanager
    def _hub_errors(self, model: PublishedModel, folder: Path) -> Iterator[None]:
        """huggingface_hub's and the transport's errors as ours, each a one-line message."""
        endpoint = self.endpoint or constants.ENDPOINT
        try:
            yield
        except OfflineModeIsEnabled:
            raise HubUnreachableError(
                "no connection to the model hub: offline mode is on (HF_HUB_OFFLINE is set); unset it to download"
            ) from None
        except httpx2.TransportError:
            raise HubUnreachableError(
                f"no connection to the model hub ({endpoint}); check the network and try again, "
                f"the download resumes where it stopped"
            ) from None
        except HfHubHTTPError as error:
            status = error.response.status_code if error.response is not None else None
            if isinstance(error, GatedRepoError) or status in (401, 403):
                raise HubAccessError(
                    f"{model.repo_id} needs a Hugging Face token that has accepted its license: accept the Gemma "
                    f"license at {endpoint}/{model.repo_id} and set a token (HF_TOKEN, or `hf auth login`)"
                ) from None
            if status == 404:
                raise DownloadError(f"the model hub has no {model.repo_id} (moved or renamed?)") from None
            raise DownloadError(f"the model hub answered {status} for {model.repo_id}; try again later") from None
        except OSError as error:
            raise DownloadError(f"cannot write in {folder}: {error.strerror or error}") from None

    def _write_state(self, folder: Path, model: PublishedModel, commit: str, files: list[RemoteFile],
                     complete: bool) -> None:
        _write_json(folder / STATE_FILE, {
            "version": 1, "name": model.name, "repo_id": model.repo_id, "revision": commit,
            "variant": model.variant, "complete": complete, "files": [asdict(f) for f in files],
        })

    # --- check, import, remove ---------------------------------------------------------------

    def verify(self, name: str, cancel: threading.Event | None = None) -> None:
        """Hash a downloaded model's files against the hub's checksums, offline; raise naming the bad ones."""
        folder = self.models_dir / name
        state = _read_json_or_none(folder / STATE_FILE)
        if state is None:
            raise SanaStudioError(f"{name!r} was not downloaded by the model manager; nothing to verify against")
        cancel = cancel or threading.Event()
        bad = []
        for file in (RemoteFile(**entry) for entry in state["files"]):
            path = folder / file.local_path
            if not path.is_file() or path.stat().st_size != file.size or not _matches_hub(path, file, cancel):
                bad.append(file.local_path)
        if bad:
            raise CheckpointError(f"{folder}: {len(bad)} file(s) missing or damaged ({', '.join(bad[:5])}); "
                                  f"download {name!r} again to repair it")

    def import_folder(self, path: str | Path, name: str | None = None) -> InstalledModel:
        """Add a model folder that lives elsewhere, after checking it loads; it is never moved or deleted."""
        source = Path(path).expanduser().resolve()
        check_model_folder(source)
        if source.parent == self.models_dir.resolve():
            return self._describe(source)
        name = name or source.name
        if not MODEL_NAME.match(name):
            raise SanaStudioError(f"model name {name!r}: use letters, digits, spaces, '.', '-' and '_'")
        if any(model.name == name for model in self.installed()):
            raise SanaStudioError(f"a model named {name!r} is already installed; choose another name")
        self._write_imports({**self._imports(), name: str(source)})
        return InstalledModel(name, source, _size_on_disk(source), "import")

    def remove(self, name: str) -> None:
        """Delete a downloaded model's folder; for an imported one, forget it and leave its files."""
        imports = self._imports()
        if name in imports:
            del imports[name]
            self._write_imports(imports)
            return
        folder = self.models_dir / name
        if name.startswith(".") or "/" in name or "\\" in name or not folder.is_dir():
            raise SanaStudioError(f"no installed model named {name!r}")
        try:
            if folder.is_symlink():
                folder.unlink()
            else:
                shutil.rmtree(folder)
        except OSError as error:  # e.g. a file still open by a running generation on Windows
            raise SanaStudioError(f"cannot remove {folder}: {error.strerror or error}") from None

    def _describe(self, folder: Path) -> InstalledModel | None:
        state = _read_json_or_none(folder / STATE_FILE)
        if state is not None:
            return InstalledModel(folder.name, folder, _size_on_disk(folder), "download", bool(state.get("complete")),
                                  state.get("repo_id"), state.get("revision"))
        if (folder / "model_index.json").is_file():
            return InstalledModel(folder.name, folder, _size_on_disk(folder), "folder")
        return None

    def _imports(self) -> dict[str, str]:
        data = _read_json_or_none(self.models_dir / IMPORTS_FILE) or {}
        return dict(data.get("models", {}))

    def _write_imports(self, imports: dict[str, str]) -> None:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        _write_json(self.models_dir / IMPORTS_FILE, {"version": 1, "models": imports})


def select_files(entries: Iterable[RepoFile], variant: str | None) -> list[RemoteFile]:
    """What the engine loads, from a repository listing: one weight variant per component folder.

    A component gets `variant` where it has it, else its plain weights (many repositories publish
    the VAE only in fp32), else whichever variant it has.
    """
    kept: list[tuple[RepoFile, str | None]] = []
    weights: dict[str, list[tuple[RepoFile, str | None]]] = {}
    for entry in entries:
        folder, _, filename = entry.path.rpartition("/")
        if entry.path == "model_index.json" or (not folder and filename.upper().startswith("LICENSE")):
            kept.append((entry, None))
        elif folder in COMPONENTS and not filename.endswith(NOT_LOADED):
            weight = WEIGHT_FILE.match(filename) or WEIGHT_INDEX.match(filename)
            if weight:
                weights.setdefault(folder, []).append((entry, weight["variant"]))
            else:
                kept.append((entry, None))
    for files in weights.values():
        present = {tag for _, tag in files}
        chosen = variant if variant in present else None if None in present else sorted(present)[0]
        kept += [(entry, tag) for entry, tag in files if tag == chosen]
    return [
        RemoteFile(
            repo_path=entry.path,
            local_path=_plain_name(entry.path, tag),
            size=entry.lfs.size if entry.lfs else entry.size,
            sha256=entry.lfs.sha256 if entry.lfs else None,
            git_sha1=entry.blob_id,
        )
        for entry, tag in sorted(kept, key=lambda item: item[0].path)
    ]


def _plain_name(path: str, variant: str | None) -> str:
    # The entry file loses its tag; shards keep their names, since the index lists them by name.
    if variant is None:
        return path
    return (path.replace(f".{variant}.safetensors", ".safetensors")
                .replace(f".safetensors.index.{variant}.json", ".safetensors.index.json"))


def _partial_path(target: Path) -> Path:
    return target.with_name(target.name + PARTIAL_SUFFIX)


def _grew(partial: Path, had: int) -> bool:
    return partial.is_file() and partial.stat().st_size > had


def _matches_hub(path: Path, file: RemoteFile, cancel: threading.Event) -> bool:
    if file.sha256:
        digest, expected = hashlib.sha256(), file.sha256
    else:  # git's blob id: sha1 of "blob <size>\0" and the content
        digest, expected = hashlib.sha1(f"blob {path.stat().st_size}\0".encode()), file.git_sha1
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            if cancel.is_set():
                raise DownloadCancelled(f"verification of {file.repo_path} cancelled")
            digest.update(chunk)
    return digest.hexdigest() == expected


class _Progress:
    """Bytes done of the whole model and the speed over the last seconds, at most ten events a second."""

    WINDOW = 5.0
    INTERVAL = 0.1

    def __init__(self, model: str, total: int, callback: Callable[[DownloadProgress], None] | None):
        self.model, self.total, self.callback = model, total, callback
        self.finished = 0  # bytes of the files done
        self.current = 0  # bytes of the current file on disk
        self.file: RemoteFile | None = None
        self.transferred = 0
        self.samples: deque[tuple[float, int]] = deque()
        self.last_event = -1e9

    def start(self, file: RemoteFile, on_disk: int, verifying: bool = False) -> None:
        self.file, self.current = file, on_disk
        self._emit(force=True, verifying=verifying)

    def advance(self, count: int) -> None:
        self.current += count
        self.transferred += count
        self._emit()

    def done(self, size: int) -> None:
        self.finished += size
        self.current = 0
        self._emit(force=True)

    def _emit(self, force: bool = False, verifying: bool = False) -> None:
        now = time.monotonic()
        self.samples.append((now, self.transferred))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.WINDOW:
            self.samples.popleft()
        if self.callback is None or (not force and now - self.last_event < self.INTERVAL):
            return
        self.last_event = now
        start, transferred = self.samples[0]
        speed = (self.transferred - transferred) / (now - start) if now > start else 0.0
        done = self.finished + self.current
        self.callback(DownloadProgress(
            model=self.model, file=self.file.repo_path if self.file else "", done_bytes=done,
            total_bytes=self.total, speed=speed, eta=(self.total - done) / speed if speed > 0 else None,
            verifying=verifying,
        ))


# --- checking a folder without loading it ------------------------------------------------------


def _size_on_disk(folder: Path) -> int:
    total = 0
    for parent, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.lstat(os.path.join(parent, name)).st_size
            except OSError:
                pass
    return total


def _read_json_or_none(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(temporary, path)
