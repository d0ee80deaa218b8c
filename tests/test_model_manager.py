"""The model manager against a fake hub on 127.0.0.1: downloads, resumes, repairs, and clear failures.

The fake (tests/fake_hub.py) serves the tiny model the way the hub publishes SANA: fp16 variants
beside the plain weights, plus files the engine never loads. `HF_ENDPOINT` (huggingface_hub's
constants, read at import) points at it, HF_HOME and the token files are in tmp_path, and every
connection outside the loopback fails the test.
"""

import hashlib
import os
import shutil
import socket
import threading

import pytest
from huggingface_hub import RepoFile, constants
from safetensors.torch import load_file, save_file

from engine import model_manager
from engine.catalog import CATALOG, PublishedModel
from engine.errors import CheckpointError
from engine.model_manager import (
    DownloadCancelled,
    HubAccessError,
    HubUnreachableError,
    ModelManager,
    NotEnoughSpaceError,
    check_model_folder,
    select_files,
)
from tests.fake_hub import FakeHub

REPO = "test/tiny-sana"
TINY = PublishedModel("tiny-sana", "Tiny SANA", REPO, "fp16", 0.002, 128)
VAE = "vae/diffusion_pytorch_model.safetensors"
DIT_FP16 = "transformer/diffusion_pytorch_model.fp16.safetensors"
# what the engine needs from the fake repository, and where each file lands
EXPECTED = {
    "LICENSE.txt": "LICENSE.txt",
    "model_index.json": "model_index.json",
    "scheduler/scheduler_config.json": "scheduler/scheduler_config.json",
    "text_encoder/config.json": "text_encoder/config.json",
    "text_encoder/model.fp16.safetensors": "text_encoder/model.safetensors",
    "tokenizer/tokenizer.json": "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json": "tokenizer/tokenizer_config.json",
    "transformer/config.json": "transformer/config.json",
    DIT_FP16: "transformer/diffusion_pytorch_model.safetensors",
    "vae/config.json": "vae/config.json",
    VAE: VAE,
}


@pytest.fixture(scope="module")
def fake_repo(tiny_model_dir, tmp_path_factory):
    """The tiny model laid out as the hub publishes one: variants, .bin duplicates, a README."""
    repo = tmp_path_factory.mktemp("hub") / "tiny-sana"
    shutil.copytree(tiny_model_dir, repo)
    for plain in ("transformer/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        tensors = load_file(repo / plain)
        save_file({k: v.half() for k, v in tensors.items()}, repo / plain.replace(".safetensors", ".fp16.safetensors"))
    (repo / "vae" / "diffusion_pytorch_model.bin").write_bytes(os.urandom(4096))
    (repo / "transformer" / "diffusion_pytorch_model.fp16.bin").write_bytes(os.urandom(4096))
    (repo / "README.md").write_text("# tiny SANA\n")
    (repo / "LICENSE.txt").write_text("the terms of the tiny model\n")
    (repo / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    return repo


@pytest.fixture
def hub(fake_repo, tmp_path, monkeypatch):
    """The fake hub, with huggingface_hub pointed at it and cut off from any other host or token."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_OIDC_RESOURCE", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(home / ".agent_harnesses.json"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    real_connect = socket.create_connection

    def loopback_only(address, *args, **kwargs):
        assert address[0] in ("127.0.0.1", "localhost", "::1"), f"connection to {address} outside the loopback"
        return real_connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", loopback_only)
    with FakeHub(REPO, fake_repo) as fake:
        # huggingface_hub reads HF_ENDPOINT once, at import: set the constants it derived from it too.
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.setattr(constants, "ENDPOINT", fake.url)
        template = fake.url + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        yield fake


@pytest.fixture
def manager(tmp_path):
    return ModelManager(tmp_path / "models", catalog=(TINY,))


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_catalog_names_the_published_sana_repositories():
    by_name = {model.name: model for model in CATALOG}
    assert by_name["sana-1.6b-4k"].repo_id == "Efficient-Large-Model/Sana_1600M_4Kpx_BF16_diffusers"
    assert by_name["sana-1.6b-4k"].native_size == 4096 and by_name["sana-1.6b-2k"].native_size == 2048
    assert {m.native_size for m in CATALOG if m.name.startswith("sana-0.6b")} == {512, 1024}
    assert by_name["sana-1.5-1.6b-1024"].repo_id == "Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers"
    for model in CATALOG:
        assert model.repo_id.startswith("Efficient-Large-Model/") and model.repo_id.endswith("_diffusers")
        assert "Gemma" in model.license and model.download_gb > 1


def test_only_one_weight_variant_and_no_duplicates_are_selected(fake_repo):
    entries = [RepoFile(**entry) for entry in FakeHub(REPO, fake_repo).tree() if entry["type"] == "file"]
    chosen = {f.repo_path: f.local_path for f in select_files(entries, "fp16")}
    assert chosen == EXPECTED  # no .bin, README, .gitattributes, nor the fp32 copies of fp16 weights


def test_sharded_variants_keep_their_shard_names_and_the_index_loses_its_tag():
    def entry(path):
        return RepoFile(path=path, size=1, oid="0" * 40)

    names = ["text_encoder/model-00001-of-00002.safetensors", "text_encoder/model-00002-of-00002.safetensors",
             "text_encoder/model.safetensors.index.json", "text_encoder/model.bf16-00001-of-00002.safetensors",
             "text_encoder/model.bf16-00002-of-00002.safetensors", "text_encoder/model.safetensors.index.bf16.json",
             "text_encoder/config.json"]
    chosen = {f.repo_path: f.local_path for f in select_files([entry(n) for n in names], "bf16")}
    assert chosen == {
        "text_encoder/config.json": "text_encoder/config.json",
        "text_encoder/model.bf16-00001-of-00002.safetensors": "text_encoder/model.bf16-00001-of-00002.safetensors",
        "text_encoder/model.bf16-00002-of-00002.safetensors": "text_encoder/model.bf16-00002-of-00002.safetensors",
        "text_encoder/model.safetensors.index.bf16.json": "text_encoder/model.safetensors.index.json",
    }


def test_download_reports_progress_and_installs_a_model_the_engine_loads(hub, manager, fake_repo):
    from engine.model import load_model

    events = []
    installed = manager.download("tiny-sana", on_progress=events.append)

    folder = manager.models_dir / "tiny-sana"
    total = sum(len(hub.files[path]) for path in EXPECTED)
    assert installed.path == folder and installed.ready and installed.source == "download"
    assert installed.revision == hub.commit and installed.size_bytes >= total
    for repo_path, local_path in EXPECTED.items():
        assert sha256(folder / local_path) == hub.sha256[repo_path], local_path
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert on_disk == set(EXPECTED.values()) | {model_manager.STATE_FILE}

    done = [event.done_bytes for event in events]
    assert done == sorted(done) and done[-1] == total and {e.total_bytes for e in events} == {total}
    assert any(event.speed > 0 and event.eta is not None for event in events)
    assert {event.file for event in events} == set(EXPECTED)

    # Only the hub API, /resolve and the blob store were asked: no Xet, no token, no other file.
    # (huggingface_hub's user-agent asks /api/agent-harnesses once a process, unless telemetry is off.)
    allowed = (f"/api/models/{REPO}/", f"/{REPO}/resolve/{hub.commit}/", "/blobs/", "/api/agent-harnesses")
    assert [e.path for e in hub.log if not e.path.startswith(allowed)] == []
    assert all(e.authorization is None for e in hub.log)
    assert {e.path.rsplit(f"/{hub.commit}/", 1)[-1] for e in hub.log if "/resolve/" in e.path} == set(EXPECTED)

    model = load_model(installed.path, device="cpu")  # the fp16 variants were found under plain names
    assert model.name == "tiny-sana" and manager.installed() == [installed]

    hub.log.clear()
    again = manager.download("tiny-sana")  # everything verified on disk: no content fetched
    assert again == installed and all(not e.path.startswith(("/blobs/", f"/{REPO}/resolve/")) for e in hub.log)


def test_a_dropped_connection_is_resumed_with_a_range_request(hub, manager):
    size = len(hub.files[VAE])
    hub.drop_after[VAE] = 300_000
    manager.download("tiny-sana")

    first, second = hub.transfers(VAE)
    assert (first.range, first.body_bytes) == (None, 300_000)
    assert (second.range, second.status, second.body_bytes) == ("bytes=300000-", 206, size - 300_000)
    assert sha256(manager.models_dir / "tiny-sana" / VAE) == hub.sha256[VAE]


def test_a_cancelled_download_resumes_where_it_stopped_and_fetches_only_the_rest(hub, manager, monkeypatch):
    monkeypatch.setattr(model_manager._Progress, "INTERVAL", 0.0)  # an event per received piece
    cancel = threading.Event()
    seen = []

    def cancel_part_way_into_the_vae(event):
        if event.file == VAE and not event.verifying:
            seen.append(event.done_bytes)
            if len(seen) == 3:
                cancel.set()

    with pytest.raises(DownloadCancelled):
        manager.download("tiny-sana", on_progress=cancel_part_way_into_the_vae, cancel=cancel)
    partial = manager.models_dir / "tiny-sana" / (VAE + ".incomplete")
    kept = partial.stat().st_size
    assert 0 < kept < len(hub.files[VAE])
    assert [m.ready for m in manager.installed()] == [False]

    fetched_before = {path: len(hub.transfers(path)) for path in EXPECTED}
    manager.download("tiny-sana")

    resumed = hub.transfers(VAE)[-1]
    assert (resumed.range, resumed.status, resumed.body_bytes) == (f"bytes={kept}-", 206, len(hub.files[VAE]) - kept)
    finished_earlier = [p for p in EXPECTED if p != VAE and fetched_before[p] == 1]
    assert finished_earlier and all(len(hub.transfers(p)) == 1 for p in finished_earlier)
    assert sha256(manager.models_dir / "tiny-sana" / VAE) == hub.sha256[VAE]
    assert [m.ready for m in manager.installed()] == [True] and not partial.exists()


def test_a_damaged_file_on_disk_is_detected_and_fetched_again(hub, manager):
    manager.download("tiny-sana")
    target = manager.models_dir / "tiny-sana" / EXPECTED[DIT_FP16]
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, same size: only the hash can tell
    target.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="1 file.*damaged.*transformer/diffusion_pytorch_model.safetensors"):
        manager.verify("tiny-sana")

    manager.download("tiny-sana")
    assert len(hub.transfers(DIT_FP16)) == 2 and all(len(hub.transfers(p)) == 1 for p in EXPECTED if p != DIT_FP16)
    assert sha256(target) == hub.sha256[DIT_FP16]
    manager.verify("tiny-sana")


def test_a_corrupted_transfer_is_detected_and_fetched_again(hub, manager):
    hub.corrupt_once.add(VAE)
    manager.download("tiny-sana")
    assert [t.status for t in hub.transfers(VAE)] == [200, 200]
    assert sha256(manager.models_dir / "tiny-sana" / VAE) == hub.sha256[VAE]


def test_no_connection_gives_one_clear_line(hub, manager):
    url = hub.url
    hub.stop()
    with pytest.raises(HubUnreachableError) as error:
        manager.download("tiny-sana")
    message = str(error.value)
    assert message.startswith(f"no connection to the model hub ({url}); check the network") and "\n" not in message


def test_offline_mode_gives_one_clear_line(hub, manager, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnreachableError, match=r"^no connection to the model hub: offline mode is on \(HF_HUB_OFF"):
        manager.download("tiny-sana")
    assert hub.log == []


def test_a_gated_repository_asks_for_the_license_and_a_token(hub, manager, tmp_path):
    hub.gated = True
    with pytest.raises(HubAccessError) as error:
        manager.download("tiny-sana")
    message = str(error.value)
    assert f"accept the Gemma license at {hub.url}/{REPO} and set a token" in message and "\n" not in message

    hub.accepted_tokens.add("hf_accepted")
    licensed = ModelManager(tmp_path / "models", token="hf_accepted", catalog=(TINY,))
    assert licensed.download("tiny-sana").ready
    resolves = [e for e in hub.log if "/resolve/" in e.path and e.status in (200, 302)]
    assert resolves and all(e.authorization == "Bearer hf_accepted" for e in resolves)
    assert all(e.authorization is None for e in hub.log if e.path.startswith("/blobs/"))  # never sent off the hub


def test_too_little_disk_space_is_refused_before_anything_is_fetched(hub, manager, monkeypatch):
    monkeypatch.setattr(model_manager, "free_space", lambda path: 10_000_000)
    with pytest.raises(NotEnoughSpaceError, match=r"Tiny SANA needs 68\.\d MB of free disk space in .*; 10\.0 MB are"):
        manager.download("tiny-sana")
    assert all(e.path.startswith("/api/") for e in hub.log)
    assert not (manager.models_dir / "tiny-sana").exists()


def test_import_checks_the_folder_and_remove_leaves_imported_files(tiny_model_dir, manager, tmp_path):
    imported = manager.import_folder(tiny_model_dir, name="my sana")
    assert imported.source == "import" and imported.path == tiny_model_dir.resolve() and imported.size_bytes > 0
    assert [m.name for m in manager.installed()] == ["my sana"]
    with pytest.raises(Exception, match="already installed"):
        manager.import_folder(tiny_model_dir, name="my sana")

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "transformer" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    del tensors["proj_out.weight"]
    save_file(tensors, weights)
    with pytest.raises(CheckpointError, match="transformer weights do not match.*missing 1: proj_out.weight"):
        manager.import_folder(broken)
    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_model_dir, truncated)
    vae = truncated / "vae" / "diffusion_pytorch_model.safetensors"
    vae.write_bytes(vae.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="diffusion_pytorch_model.safetensors: truncated or corrupt"):
        check_model_folder(truncated)

    manager.remove("my sana")
    assert manager.installed() == [] and (tiny_model_dir / "model_index.json").is_file()


def test_remove_deletes_a_downloaded_model(hub, manager):
    manager.download("tiny-sana")
    manager.remove("tiny-sana")
    assert manager.installed() == [] and not (manager.models_dir / "tiny-sana").exists()
