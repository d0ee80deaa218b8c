"""The Linux installer end to end: install into a fresh HOME, render with the installed command,
uninstall, and find HOME exactly as it was.

The full run installs real packages into a new environment (about 2.5 GB, a minute on 2 cores with
HOME in memory). Its wheels come from a wheelhouse filled once from the package index into the user cache
(keyed by pyproject.toml's requirements), so every later run installs from local files only
(pip --no-index) and never fetches a multi-GB torch build.
"""

import hashlib
import json
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import platformdirs
import pytest
from PIL import Image

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "installers" / "linux" / "install.sh"
UNINSTALL = ROOT / "installers" / "linux" / "uninstall.sh"
TORCH = "torch==2.13.0"  # the CPU build that lies on this machine's disk; see wheelhouse()

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux installer")


def snapshot(home: Path) -> dict[str, str]:
    """Every path under `home`, with a file's content hash or a folder's mark."""
    found = {}
    for path in sorted(home.rglob("*")):
        key = path.relative_to(home).as_posix()
        found[key] = "dir" if path.is_dir() and not path.is_symlink() else hashlib.sha256(
            path.read_bytes() if path.is_file() else os.readlink(path).encode()).hexdigest()
    return found


def wheelhouse() -> Path:
    """All wheels the install needs, fetched once per set of requirements into the user cache."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    requirements = [TORCH, *project["build-system"]["requires"], *project["project"]["dependencies"]]
    folder = Path(platformdirs.user_cache_dir("sana-studio-tests")) / "wheels"
    key = json.dumps([requirements, sys.implementation.cache_tag, platform.machine()])
    stamp = folder / f".filled-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if stamp.exists():
        return folder
    report = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps", "--quiet",
         "--report", "-", TORCH], capture_output=True, text=True, check=True,
    )
    source = json.loads(report.stdout)["install"][0]["download_info"]["url"]
    if "cpu" not in source:
        pytest.skip(f"{TORCH} would come from {source}, not a CPU build: refusing a multi-GB download")
    filled = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(folder), *requirements],
                            capture_output=True, text=True, timeout=900)
    if filled.returncode != 0:
        pytest.skip(f"could not fetch the wheels to install from: {filled.stderr.strip()[-500:]}")
    stamp.touch()
    return folder


def isolated_env(home: Path, **extra: str) -> dict[str, str]:
    """The caller's environment with HOME and the XDG folders moved, and no trace of the dev venv.

    PATH keeps only folders outside the real HOME: tools installed there (rustup's proxies, which
    pip runs for its user agent) would write their own settings into the new HOME.
    """
    real_home = Path.home().resolve()
    dev_bin = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "XDG_", "SANA_STUDIO_", "HF_")) and k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep)
        if p and Path(p) != dev_bin and not Path(p).resolve().is_relative_to(real_home)
    )
    env |= {
        "HOME": str(home), "XDG_DATA_HOME": str(home / ".local" / "share"), "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"), "XDG_STATE_HOME": str(home / ".local" / "state"),
        "SANA_STUDIO_PYTHON": getattr(sys, "_base_executable", sys.executable),
    }
    return env | extra


@pytest.fixture
def fresh_home(tmp_path):
    """An empty HOME, in memory (tmpfs) where there is room: the 2.5 GB environment is written and
    deleted again, and on a busy disk that alone can take minutes."""
    memory = Path("/dev/shm")
    if memory.is_dir() and os.access(memory, os.W_OK) and shutil.disk_usage(memory).free > 6 << 30:
        home = Path(tempfile.mkdtemp(prefix="sana-studio-home-", dir=memory))
        yield home
        shutil.rmtree(home, ignore_errors=True)
    else:
        home = tmp_path / "home"
        home.mkdir()
        yield home


def run(command: list, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], env=env, capture_output=True, text=True, timeout=timeout)


def test_uninstall_removes_only_what_the_manifest_lists(tmp_path):
    home = tmp_path / "home"
    ours_dir, kept_dir, venv = home / "ours", home / "shared", home / "not-a-venv"
    for folder in (ours_dir, kept_dir, venv):
        folder.mkdir(parents=True)
    (ours_dir / "launcher").write_text("ours")
    (kept_dir / "entry").write_text("ours")
    (kept_dir / "users-own-file").write_text("not ours")
    (venv / "data").write_text("a folder listed as an environment, without pyvenv.cfg")
    manifest = home / "manifest.txt"
    manifest.write_text("\n".join([
        f"dir {ours_dir}", f"file {ours_dir / 'launcher'}", f"dir {kept_dir}", f"file {kept_dir / 'entry'}",
        f"venv {venv}", "file relative/path", f"file {manifest}",
    ]) + "\n")

    result = run(["bash", UNINSTALL, manifest], isolated_env(home))
    assert result.returncode == 0, result.stderr
    assert snapshot(home) == {
        "shared": "dir", "shared/users-own-file": hashlib.sha256(b"not ours").hexdigest(),
        "not-a-venv": "dir", "not-a-venv/data": snapshot(home)["not-a-venv/data"],
    }
    assert f"kept {kept_dir}: it holds files the installer did not add" in result.stderr
    assert f"kept {venv}: it is not a Python environment" in result.stderr


def test_install_refuses_to_replace_a_file_it_did_not_add_before_installing_anything(tmp_path):
    home = tmp_path / "home"
    launcher = home / ".local" / "bin" / "sana-studio"
    launcher.parent.mkdir(parents=True)
    launcher.write_text("#!/bin/sh\necho the user's own script\n")
    before = snapshot(home)

    result = run(["bash", INSTALL], isolated_env(home), timeout=60)
    assert result.returncode == 1
    assert f"{launcher} already exists and is not from this installer" in result.stderr
    assert snapshot(home) == before


def test_a_failed_install_removes_what_it_added(fresh_home):
    (fresh_home / ".profile").write_text("# the user's own\n")
    before = snapshot(fresh_home)
    env = isolated_env(fresh_home, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(fresh_home / "nothing"),
                       SANA_STUDIO_TORCH_SPEC="torch==0.0.1", SANA_STUDIO_TORCH_INDEX="default")

    result = run(["bash", INSTALL], env, timeout=300)
    assert result.returncode != 0
    assert "stopped before the end; removing what was added" in result.stderr
    assert snapshot(fresh_home) == before


@pytest.mark.slow
def test_install_then_generate_then_uninstall_leaves_home_as_it_was(tiny_model_dir, fresh_home, tmp_path):
    wheels = wheelhouse()
    home = fresh_home
    (home / ".local" / "share" / "applications").mkdir(parents=True)  # already there: must stay
    (home / ".local" / "share" / "applications" / "editor.desktop").write_text("[Desktop Entry]\nName=Editor\n")
    (home / ".bashrc").write_text("# the user's own\n")
    before = snapshot(home)
    env = isolated_env(
        home, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheels), PIP_NO_CACHE_DIR="1", PIP_NO_COMPILE="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1", SANA_STUDIO_TORCH_SPEC=TORCH, SANA_STUDIO_TORCH_INDEX="default",
    )

    started = time.monotonic()
    installed = run(["bash", INSTALL], env)
    install_seconds = time.monotonic() - started
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    print(f"install took {install_seconds:.0f} s")

    share = home / ".local" / "share"
    launcher = home / ".local" / "bin" / "sana-studio"
    assert launcher.stat().st_mode & stat.S_IXUSR
    entry = (share / "applications" / "sana-studio.desktop").read_text()
    assert f'Exec="{launcher}"' in entry and "Icon=sana-studio" in entry
    assert (share / "icons" / "hicolor" / "scalable" / "apps" / "sana-studio.svg").read_text().startswith("<svg")
    assert Image.open(share / "icons" / "hicolor" / "256x256" / "apps" / "sana-studio.png").size == (256, 256)
    if shutil.which("desktop-file-validate"):
        validated = run(["desktop-file-validate", share / "applications" / "sana-studio.desktop"], env)
        assert validated.returncode == 0, validated.stdout + validated.stderr

    output = tmp_path / "out.png"  # outside HOME
    started = time.monotonic()
    generated = run([launcher, "generate", "--model", tiny_model_dir, "--prompt", "a red circle on the left",
                     "--width", "64", "--height", "64", "--steps", "2", "--seed", "3", "--device", "cpu",
                     "--output", output], env | {"QT_QPA_PLATFORM": "offscreen", "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert generated.returncode == 0, generated.stderr
    print(f"first generate took {time.monotonic() - started:.0f} s")
    assert generated.stdout.strip() == str(output)
    image = np.asarray(Image.open(output).convert("RGB"))
    assert image.shape == (64, 64, 3) and image.std() > 1.0

    started = time.monotonic()
    removed = run([share / "sana-studio" / "uninstall.sh"], env, timeout=120)
    print(f"uninstall took {time.monotonic() - started:.0f} s")
    assert removed.returncode == 0, removed.stderr
    assert snapshot(home) == before
