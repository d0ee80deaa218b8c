"""The model manager dialog and the first-run banner, against the fake hub on 127.0.0.1, offscreen.

The hub, HF_HOME, the tokens and the loopback-only guard come from tests/test_model_manager.py;
the private user dirs (so the models folder is under tmp_path) and the window from
tests/test_app_window.py. The fake hub's transfers are slowed to a few MB/s so that a download
lasts long enough to watch and to cancel.
"""

from __future__ import annotations

import itertools
import os
import re
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QFileDialog, QMessageBox

from app import capabilities, model_manager_dialog
from app.model_manager_dialog import ModelManagerDialog
from app.request_form import RequestForm
from app.settings import Settings, models_dir
from engine import model_manager
from tests import fake_hub, test_app_window, test_model_manager
from tests.test_app_window import WAIT_MS
from tests.test_model_manager import TINY

# The fixtures this file shares: the private user dirs and the window, the fake hub and its repository.
user_dirs, open_window = test_app_window.user_dirs, test_app_window.open_window
fake_repo, hub = test_model_manager.fake_repo, test_model_manager.hub

LEFT = Qt.MouseButton.LeftButton


@pytest.fixture
def tiny_catalog(monkeypatch):
    """The dialog publishes only the tiny model the fake hub serves."""
    monkeypatch.setattr(model_manager_dialog, "CATALOG", (TINY,))


def slow_transfers(monkeypatch, pause: float) -> None:
    """Send every response body in 64 KB pieces, `pause` seconds apart."""
    def send(handler, path, status, headers, body, head):
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.end_headers()
        sent = 0
        try:
            for start in range(0, 0 if head else len(body), 1 << 16):
                handler.wfile.write(body[start:start + (1 << 16)])
                handler.wfile.flush()
                sent += min(1 << 16, len(body) - start)
                time.sleep(pause)
        except OSError:  # the client hung up: a cancel
            pass
        handler.fake.log.append(fake_hub.Logged(handler.command, path, handler.headers.get("Range"), status, sent,
                                                handler.headers.get("Authorization")))

    monkeypatch.setattr(fake_hub._Handler, "_send", send)


@pytest.fixture
def dialog(qtbot, tmp_path, tiny_catalog):
    shown = ModelManagerDialog(folder=tmp_path / "models")
    qtbot.addWidget(shown)
    shown.show()
    yield shown
    shown.shutdown()


def wait_download(qtbot, dialog) -> None:
    qtbot.waitUntil(lambda: not dialog.downloading, timeout=WAIT_MS)


def test_a_download_shows_progress_keeps_the_ui_turning_and_use_this_model_switches_the_app(
        qtbot, open_window, hub, tiny_catalog, monkeypatch):
    monkeypatch.setattr(capabilities, "demo_model_path", lambda: None)
    monkeypatch.setattr(model_manager._Progress, "INTERVAL", 0.02)
    slow_transfers(monkeypatch, 0.01)
    window = open_window(model=None, wait=False)
    qtbot.waitUntil(lambda: window.state.model_status == "none", timeout=WAIT_MS)
    qtbot.mouseClick(window.banner.action_buttons()["download_model"], LEFT)  # the no-model banner's button
    dialog = window._models_dialog
    assert dialog.isVisible() and dialog.folder == models_dir()

    shown, ticks = [], []
    dialog.progress.valueChanged.connect(lambda value: shown.append((time.monotonic(), value)))
    texts = []
    dialog.progress.valueChanged.connect(lambda _: texts.append(dialog.progress.format()))
    timer = QTimer(interval=10)
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    timer.start()
    dialog.select("tiny-sana")
    qtbot.mouseClick(dialog.download_button, LEFT)
    assert dialog.downloading and not dialog.download_button.isEnabled()
    wait_download(qtbot, dialog)
    timer.stop()

    values = [value for _, value in shown]
    assert len(values) >= 5 and values == sorted(values) and values[-1] == 1000
    assert any(re.fullmatch(r"tiny-sana: [\d.]+ MB of [\d.]+ MB · [\d.]+ [KM]B/s · \d+ s left", t) for t in texts)
    during = [t for t in ticks if shown[0][0] <= t <= shown[-1][0]]
    gaps = [b - a for a, b in itertools.pairwise(during)]
    assert len(during) >= 10 and max(gaps) < 0.25  # the UI thread kept turning while bytes arrived
    assert dialog.installed_names() == ["tiny-sana"] and not dialog.error.isVisible()

    dialog.select("tiny-sana")
    qtbot.mouseClick(dialog.use_button, LEFT)
    installed = str(models_dir() / "tiny-sana")
    qtbot.waitUntil(lambda: window.state.model_status == "ready", timeout=WAIT_MS)
    assert window.state.model.path == installed and window.settings["model_path"] == installed
    assert window.generate_button.isEnabled() and not window.banner.isVisible()
    assert Settings.load()["model_path"] == installed


def test_cancel_mid_download_stops_it_quietly_and_keeps_the_partial_files(qtbot, hub, dialog, monkeypatch):
    slow_transfers(monkeypatch, 0.02)
    cancelled_at = []

    def cancel_once_bytes_arrive(value):
        if 0 < value < 1000 and not cancelled_at:
            cancelled_at.append(time.monotonic())
            qtbot.mouseClick(dialog.cancel_button, LEFT)

    dialog.progress.valueChanged.connect(cancel_once_bytes_arrive)
    dialog.download("tiny-sana")
    wait_download(qtbot, dialog)

    assert cancelled_at and time.monotonic() - cancelled_at[0] < 3.0
    assert "cancelled" in dialog.progress.format() and not dialog.error.isVisible()
    total = sum(len(data) for data in hub.files.values())
    assert sum(entry.body_bytes for entry in hub.log) < total / 2
    assert dialog.installed_names() == [] and dialog.installed_names(ready_only=False) == ["tiny-sana"]
    assert dialog.installed.topLevelItem(0).text(2) == "downloaded (incomplete)"
    assert not dialog.use_button.isEnabled()


def test_no_connection_shows_the_offline_line(qtbot, hub, dialog):
    hub.stop()
    dialog.download("tiny-sana")
    wait_download(qtbot, dialog)
    text = dialog.error.text()
    assert dialog.error.isVisible() and text.startswith("Offline: no connection to the model hub") and "\n" not in text
    assert not dialog.token_row.isVisible()


def test_a_gated_model_asks_for_a_token_and_downloads_with_it(qtbot, hub, dialog):
    hub.gated = True
    hub.accepted_tokens.add("hf_accepted")
    dialog.select("tiny-sana")
    dialog.download()
    wait_download(qtbot, dialog)
    assert "needs a Hugging Face token that has accepted its license" in dialog.error.text()
    assert dialog.token_row.isVisible()

    qtbot.keyClicks(dialog.token_edit, "hf_accepted")
    qtbot.mouseClick(dialog.retry_button, LEFT)
    wait_download(qtbot, dialog)
    assert dialog.installed_names() == ["tiny-sana"] and not dialog.error.isVisible()
    assert any(e.authorization == "Bearer hf_accepted" for e in hub.log)


def test_too_little_space_says_what_is_needed_and_what_is_free(qtbot, hub, dialog, monkeypatch):
    monkeypatch.setattr(model_manager, "free_space", lambda path: 10_000_000)
    dialog.download("tiny-sana")
    wait_download(qtbot, dialog)
    assert re.fullmatch(r"Not enough disk space for tiny-sana: 68\.\d MB needed, 10\.0 MB free in .*models\.",
                        dialog.error.text())


def test_a_bad_folder_is_refused_in_one_line_and_remove_asks_before_removing(
        qtbot, dialog, tmp_path, tiny_model_dir, monkeypatch):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *args, **kwargs: str(empty))
    qtbot.mouseClick(dialog.import_button, LEFT)
    text = dialog.error.text()
    assert dialog.error.isVisible() and text.startswith("Cannot import not-a-model: ") and "\n" not in text
    assert dialog.installed_names() == []

    assert dialog.import_folder(str(tiny_model_dir)) is not None
    assert dialog.installed_names() == ["tiny-sana"] and not dialog.error.isVisible()
    dialog.select("tiny-sana")
    answers = [QMessageBox.StandardButton.No, QMessageBox.StandardButton.Yes]
    monkeypatch.setattr(QMessageBox, "question", lambda *args, **kwargs: answers.pop(0))
    qtbot.mouseClick(dialog.remove_button, LEFT)
    assert dialog.installed_names() == ["tiny-sana"]  # answered No
    qtbot.mouseClick(dialog.remove_button, LEFT)
    assert dialog.installed_names() == [] and (tiny_model_dir / "model_index.json").is_file()


def test_the_guidance_box_takes_each_models_own_until_the_user_chooses_one(
        qtbot, open_window, tiny_model_dir, monkeypatch):
    from engine.demo import GUIDANCE

    monkeypatch.setattr(capabilities, "demo_model_path", lambda: str(tiny_model_dir))
    window = open_window(model=None)
    form = window.form
    assert form.guidance.value() == GUIDANCE != 4.5  # the demo's own
    form.suggest_guidance(4.5)  # a checkpoint loaded next: SANA's default
    assert form.guidance.value() == 4.5
    assert "guidance_scale" not in form.fields()  # saved settings do not pin a model's own guidance
    form.guidance.setValue(6.0)  # the user's choice stays through model changes, and is saved
    form.suggest_guidance(GUIDANCE)
    assert form.guidance.value() == 6.0 and form.fields()["guidance_scale"] == 6.0

    form.guidance.setValue(GUIDANCE)  # the demo's own, at the next start: a checkpoint gets SANA's
    restarted = RequestForm()
    qtbot.addWidget(restarted)
    restarted.set_fields(form.fields())
    restarted.suggest_guidance(4.5)
    assert restarted.guidance.value() == 4.5


def test_the_demo_model_shows_the_first_run_banner_whose_button_opens_the_dialog(
        qtbot, open_window, tiny_model_dir, tiny_catalog, monkeypatch):
    monkeypatch.setattr(capabilities, "demo_model_path", lambda: str(tiny_model_dir))
    window = open_window(model=None)
    assert not window.windowIcon().isNull()
    banner = window.banner
    assert banner.isVisible() and banner.level == "info" and banner.topic == "demo"
    assert "draws simple coloured shapes" in banner.message.text()
    assert window.settings["model_path"] == ""  # the demo is not remembered as the user's choice

    qtbot.mouseClick(banner.action_buttons()["download_model"], LEFT)
    assert window._models_dialog.isVisible()
    window._models_dialog.hide()

    window._on_model_changed()  # the next time the demo is shown, the note is back, until dismissed
    assert banner.isVisible() and banner.topic == "demo"
    qtbot.mouseClick(banner.close_button, LEFT)
    assert not banner.isVisible() and Settings.load()["demo_notice_dismissed"] is True
    window._on_model_changed()
    assert not banner.isVisible()
