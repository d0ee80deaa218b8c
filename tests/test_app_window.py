"""The real window driving the real engine on a tiny random model, offscreen.

Every test gets its own user dirs (HOME, XDG_*) under tmp_path, so nothing touches the real
user's config, pictures or logs.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image, PngImagePlugin  # noqa: E402
from PySide6.QtCore import QMimeData, QPointF, Qt, QTimer, QUrl  # noqa: E402
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QGuiApplication  # noqa: E402
from PySide6.QtWidgets import QApplication, QFileDialog  # noqa: E402

from app import gui  # noqa: E402
from app.main_window import MainWindow  # noqa: E402
from app.settings import Settings, log_dir  # noqa: E402
from app.settings_dialog import SettingsDialog  # noqa: E402
from app.worker import Engine, default_engine  # noqa: E402
from engine.image_io import read_request_fields, save_image  # noqa: E402
from engine.request import GenerationRequest  # noqa: E402

WAIT_MS = 20_000


@pytest.fixture
def user_dirs(tmp_path, monkeypatch):
    home = tmp_path / "home"
    for name, sub in (("HOME", ""), ("XDG_CONFIG_HOME", ".config"), ("XDG_DATA_HOME", ".local/share"),
                      ("XDG_STATE_HOME", ".local/state"), ("XDG_CACHE_HOME", ".cache"),
                      ("XDG_PICTURES_DIR", "Pictures")):
        (home / sub).mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(name, str(home / sub))
    return home


@pytest.fixture
def open_window(qtbot, user_dirs, tiny_model_dir):
    """open_window(engine=None, model=tiny model) -> a shown MainWindow with its model loaded."""
    windows = []

    def open_(engine: Engine | None = None, model=tiny_model_dir, wait=True, **settings):
        stored = Settings.load()
        stored["device"] = "cpu"
        stored["form"] = {"width": 64, "height": 64, "steps": 6, "prompt": "a red circle"}
        for name, value in settings.items():
            stored[name] = value
        window = gui.create_window(stored, engine)
        windows.append(window)
        window.show()
        qtbot.waitExposed(window)
        window.start(str(model) if model else None)
        if wait:
            qtbot.waitUntil(lambda: window.state.model_status == "ready", timeout=WAIT_MS)
        return window

    yield open_
    for window in windows:
        window.close()


def output_files(window):
    folder = window.settings.output_dir()
    return sorted(folder.iterdir()) if folder.is_dir() else []


def wait_idle(qtbot, window):
    qtbot.waitUntil(lambda: not window.state.busy and not window.state.pending, timeout=WAIT_MS)


def record(signal) -> list:
    seen = []
    signal.connect(lambda *args: seen.append(args))
    return seen


class Wrapped:
    """The real Generator, with a hook that sees each engine event on the worker thread."""

    def __init__(self, generator, hook):
        self.generator, self.hook = generator, hook

    def __getattr__(self, name):
        return getattr(self.generator, name)

    def __setattr__(self, name, value):
        if name in ("generator", "hook"):
            object.__setattr__(self, name, value)
        else:
            setattr(self.generator, name, value)

    def generate(self, request, on_event=None, cancel=None):
        def sink(event):
            self.hook(event, cancel)
            on_event(event)

        return self.generator.generate(request, on_event=sink, cancel=cancel)


def hooked_engine(hook) -> Engine:
    real = default_engine()
    return Engine(real.load_model, lambda model: Wrapped(real.generator(model), hook))


# Generating -------------------------------------------------------------------------------------


def test_a_first_step_that_readies_the_gpu_says_so_in_the_progress_bar(qtbot, open_window):
    real = default_engine()

    def generator(model):
        made = real.generator(model)
        made._runner.prepares = lambda *args: True  # as the first run at a size on a GPU
        return made

    window = open_window(Engine(real.load_model, generator))
    shown = []
    window.state.preparing.connect(lambda: shown.append(window.progress.format()))  # after the window's own slot
    finished = record(window.state.job_finished)
    qtbot.mouseClick(window.generate_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: bool(finished), timeout=WAIT_MS)
    assert shown == ["Preparing the GPU for this size (the first run at a size takes longer)…"]
    assert window.progress.format().endswith("done: 1 image saved")


def test_generate_previews_every_step_and_saves_an_image_whose_metadata_round_trips(qtbot, open_window):
    window = open_window()
    previews = record(window.state.preview_changed)
    progress = record(window.state.progress_changed)
    finished = record(window.state.job_finished)
    ticks = []
    timer = QTimer(interval=1)
    timer.timeout.connect(lambda: ticks.append(window.state.busy))
    timer.start()

    window.form.prompt.setPlainText("a blue square on a white background")
    window.form.steps.setValue(8)
    window.form.seed_mode.setCurrentIndex(window.form.seed_mode.findData("fixed"))
    window.form.seed.setText("4242")
    qtbot.mouseClick(window.generate_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: bool(finished), timeout=WAIT_MS)
    timer.stop()

    assert [p[0].step for p in progress] == list(range(1, 9))
    assert len(previews) == 8 and all(not image.isNull() for (image,) in previews)
    assert any(ticks), "the UI event loop must turn while the engine runs"
    assert "it/s" in progress[-1][0].text and "ETA" in progress[-1][0].text

    files = output_files(window)
    assert len(files) == 1 and files[0].suffix == ".png"
    fields = read_request_fields(files[0])
    assert GenerationRequest.from_dict(fields) == GenerationRequest(
        prompt="a blue square on a white background", width=64, height=64, steps=8, seed=4242)
    assert window.gallery.paths()[0] == files[0]
    assert window.canvas.image.size().toTuple() == (64, 64) and not window.canvas.is_preview
    assert not list(files[0].parent.glob("*.part"))


def test_cancel_stops_within_one_step_and_writes_nothing(qtbot, open_window):
    steps_done, at_cancel = [0], []

    def hook(event, cancel):
        if type(event).__name__ == "Step":
            steps_done[0] = event.index

    window = open_window(hooked_engine(hook))
    cancelled = record(window.state.job_cancelled)
    window.form.steps.setValue(1000)
    window.generate()
    qtbot.waitUntil(lambda: steps_done[0] >= 3, timeout=WAIT_MS)
    qtbot.mouseClick(window.cancel_button, Qt.MouseButton.LeftButton)
    at_cancel.append(steps_done[0])
    qtbot.waitUntil(lambda: bool(cancelled), timeout=WAIT_MS)

    completed = cancelled[0][1]
    assert completed <= at_cancel[0] + 1, f"cancel pressed after step {at_cancel[0]}, stopped after {completed}"
    assert completed < 1000
    assert output_files(window) == []
    assert "cancelled" in window.progress.format()


def test_generate_while_busy_queues_the_second_job_and_runs_it_after_the_first(qtbot, open_window):
    release = threading.Event()

    def hook(event, cancel):
        if type(event).__name__ == "Step" and event.index == 1:
            release.wait(10)  # hold the first run so the second press finds the worker busy

    window = open_window(hooked_engine(hook))
    started = record(window.state.job_started)
    finished = record(window.state.job_finished)
    first = window.generate()
    qtbot.waitUntil(lambda: bool(started), timeout=WAIT_MS)
    window.form.prompt.setPlainText("a green triangle")
    second = window.generate()

    assert window.state.current is first and window.state.pending == [second]
    assert window.queue.count() == 2 and "green triangle" in window.queue.item(1).text()
    assert window.generate_button.text() == "Add to queue"
    release.set()
    qtbot.waitUntil(lambda: len(finished) == 2, timeout=WAIT_MS)

    assert [job for job, _ in finished] == [first, second]
    assert [j.id for (j,) in started] == [first.id, second.id]
    assert len(output_files(window)) == 2
    assert window.queue.count() == 0


def test_a_queued_job_can_be_removed_before_it_runs(qtbot, open_window):
    release = threading.Event()
    window = open_window(hooked_engine(lambda event, cancel: release.wait(10)))
    finished = record(window.state.job_finished)
    window.generate()
    removed = window.generate()
    kept = window.generate()
    window.queue.item(1).setSelected(True)  # row 0 is the running job
    qtbot.mouseClick(window.remove_button, Qt.MouseButton.LeftButton)
    assert window.state.pending == [kept]
    release.set()
    qtbot.waitUntil(lambda: len(finished) == 2, timeout=WAIT_MS)
    wait_idle(qtbot, window)
    assert removed not in [job for job, _ in finished]


def test_seed_modes_pick_a_new_seed_keep_a_fixed_one_or_reuse_the_last(qtbot, open_window):
    window = open_window()
    form = window.form
    first, second = window.generate(), window.generate()
    assert first.request.seed is not None and first.request.seed != second.request.seed
    form.seed_mode.setCurrentIndex(form.seed_mode.findData("reuse"))
    assert window.generate().request.seed == second.request.seed
    form.seed_mode.setCurrentIndex(form.seed_mode.findData("fixed"))
    form.seed.setText("31337")
    assert window.generate().request.seed == 31337
    form.seed.setText("")
    assert window.generate() is None and "seed" in window.banner.message.text()
    wait_idle(qtbot, window)


def test_an_unwritable_output_folder_keeps_the_image_for_save_as(qtbot, open_window, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    window = open_window(output_dir=str(blocker / "out"))
    finished = record(window.state.job_finished)
    window.generate()
    qtbot.waitUntil(lambda: bool(finished), timeout=WAIT_MS)

    assert "Could not save the image" in window.banner.message.text()
    assert "NOT saved" in window.progress.format()
    assert window.canvas.image is not None and finished[0][1][0].path is None
    target = tmp_path / "rescued.png"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), ""))
    assert window.save_as() == target
    assert read_request_fields(target)["prompt"] == "a red circle"


# Restoring settings -----------------------------------------------------------------------------


def drop(window, path):
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    where = window.canvas.mapTo(window, window.canvas.rect().center())
    enter = QDragEnterEvent(where, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(window, enter)
    assert enter.isAccepted()
    event = QDropEvent(QPointF(where), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(window, event)


def test_dropping_an_a1111_png_sets_every_field(qtbot, open_window, tmp_path):
    window = open_window()
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a lighthouse at dusk, film grain\nNegative prompt: blurry, text\n"
                  "Steps: 7, Sampler: Flow-Euler, CFG scale: 3.5, Seed: 1234567, Size: 96x160, Model: other")
    path = tmp_path / "a1111.png"
    Image.new("RGB", (96, 160)).save(path, pnginfo=info)

    drop(window, path)

    form = window.form
    assert form.prompt.toPlainText() == "a lighthouse at dusk, film grain"
    assert form.negative.toPlainText() == "blurry, text" and form.negative.isVisibleTo(window)
    assert (form.width_box.value(), form.height_box.value()) == (96, 160)
    assert form.steps.value() == 7 and form.guidance.value() == 3.5
    assert form.solver.currentData() == "euler"
    assert form.seed_mode.currentData() == "fixed" and form.seed.text() == "1234567"
    assert form.request() == GenerationRequest(prompt="a lighthouse at dusk, film grain",
                                               negative_prompt="blurry, text", width=96, height=160,
                                               steps=7, guidance_scale=3.5, seed=1234567, solver="euler")
    assert "restored" in window.banner.message.text()


def test_dropping_our_png_restores_its_exact_request(qtbot, open_window, tmp_path):
    window = open_window()
    request = GenerationRequest(prompt="two cats\non a mat", negative_prompt="dogs", width=128, height=64,
                                steps=11, guidance_scale=6.0, seed=2**40 + 3, num_images=3)
    path = save_image(Image.new("RGB", (128, 64)), tmp_path / "ours.png", request, "tiny-sana", "fp32")

    drop(window, path)

    assert window.form.request() == request
    assert window.canvas.image.size().toTuple() == (128, 64)


def test_a_dropped_size_that_is_not_a_multiple_of_32_is_snapped_and_said(qtbot, open_window, tmp_path):
    window = open_window()
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a tree\nSteps: 5, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 600x400")
    path = tmp_path / "odd.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    drop(window, path)
    assert (window.form.width_box.value(), window.form.height_box.value()) == (608, 416)
    assert "600×400 became 608×416" in window.banner.message.text()


def test_settings_survive_a_restart(qtbot, open_window, user_dirs, tmp_path, tiny_model_dir):
    window = open_window()
    dialog = SettingsDialog(window.settings, window)
    dialog.set_value("output_dir", str(tmp_path / "renders"))
    dialog.set_value("filename_pattern", "{prompt}-{seed}")
    dialog.set_value("image_format", "webp")
    dialog.set_value("preview_mode", "off")
    dialog.set_value("vae_tiling", "always")
    dialog.set_value("theme", "light")
    dialog.accept()
    assert dialog.result() == dialog.DialogCode.Accepted
    window.apply_settings(dialog.values())
    window.form.prompt.setPlainText("kept across restarts")
    window.form.steps.setValue(13)
    window.resize(760, 540)  # inside the offscreen 800×600 screen
    window.close()

    again = open_window(model=None)  # as `sana-studio` alone: the last used model
    assert again.state.model.path == str(tiny_model_dir)
    values = again.settings.values()
    assert values["output_dir"] == str(tmp_path / "renders")
    assert (values["filename_pattern"], values["image_format"], values["preview_mode"]) == ("{prompt}-{seed}", "webp", "off")
    assert (values["vae_tiling"], values["theme"]) == ("always", "light")
    assert values["model_path"] and values["recent_models"]
    assert again.size().toTuple() == (760, 540)
    assert again.gallery.folder == tmp_path / "renders"
    assert QApplication.instance().style().name().lower() == "fusion"

    # The test's opener overrides the form; the stored one is what a plain start restores.
    assert Settings.load()["form"]["steps"] == 13
    assert Settings.load()["form"]["prompt"] == "kept across restarts"

    finished = record(again.state.job_finished)
    previews = record(again.state.preview_changed)
    again.generate()
    qtbot.waitUntil(lambda: bool(finished), timeout=WAIT_MS)
    (path,) = output_files(again)
    assert path.name.startswith("a_red_circle-") and path.suffix == ".webp"
    assert previews == []  # preview mode off
    assert "a red circle" in Image.open(path).getexif()[0x9286]


def test_run_opens_the_window_on_the_last_used_model(qtbot, user_dirs, tiny_model_dir, monkeypatch):
    stored = Settings()
    stored["model_path"], stored["device"] = str(tiny_model_dir), "cpu"
    stored.save()
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # run() installs its own
    seen = []

    def exec_(self):
        (window,) = [w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow) and w.isVisible()]
        qtbot.waitUntil(lambda: window.state.model_status == "ready", timeout=WAIT_MS)
        seen.append(window.state.model.path)
        window.close()
        return 0

    monkeypatch.setattr(QApplication, "exec", exec_)
    before = list(logging.getLogger().handlers)
    try:
        assert gui.run() == 0
    finally:
        for handler in set(logging.getLogger().handlers) - set(before):
            logging.getLogger().removeHandler(handler)
            handler.close()
    assert seen == [str(tiny_model_dir)]
    assert (log_dir() / "sana-studio.log").is_file()


def test_the_int8_choice_is_disabled_with_a_reason_without_cuda(qtbot, open_window):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    window = open_window()
    combo = SettingsDialog(window.settings, window).editors["precision"]
    index = combo.findData("int8")
    assert not combo.model().item(index).isEnabled()
    assert "CUDA" in combo.itemData(index, Qt.ItemDataRole.ToolTipRole)


# Failures ---------------------------------------------------------------------------------------


def test_a_bad_model_folder_shows_the_banner_and_the_app_stays_usable(qtbot, open_window, tmp_path, tiny_model_dir):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "model_index.json").write_text((tiny_model_dir / "model_index.json").read_text())
    for part in ("transformer", "scheduler"):
        (broken / part).mkdir()
    window = open_window(model=broken, wait=False)
    qtbot.waitUntil(lambda: window.state.model_status == "failed", timeout=WAIT_MS)

    assert window.banner.isVisible() and window.banner.level == "error"
    message = window.banner.message.text()
    assert "vae/" in message and "text_encoder/" in message and "tokenizer/" in message
    assert "choose_model" in window.banner.action_buttons()
    assert not window.generate_button.isEnabled()

    window.apply_settings({"model_path": str(tiny_model_dir)})
    qtbot.waitUntil(lambda: window.state.model_status == "ready", timeout=WAIT_MS)
    assert not window.banner.isVisible() and window.generate_button.isEnabled()
    finished = record(window.state.job_finished)
    window.generate()
    qtbot.waitUntil(lambda: bool(finished), timeout=WAIT_MS)


def test_out_of_memory_offers_the_remedies_and_retry_at_a_smaller_size_succeeds(qtbot, open_window, user_dirs):
    handler = gui.setup_logging()
    try:
        failures_left = [1]

        def hook(event, cancel):
            if type(event).__name__ == "Step" and event.index == 2 and failures_left[0]:
                failures_left[0] -= 1
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

        window = open_window(hooked_engine(hook))
        finished = record(window.state.job_finished)
        window.form.set_fields({"width": 128, "height": 128})
        window.generate()
        qtbot.waitUntil(lambda: window.banner.isVisible() and not window.state.busy, timeout=WAIT_MS)

        assert "Out of GPU memory at 128×128" in window.banner.message.text()
        buttons = window.banner.action_buttons()
        assert set(buttons) == {"smaller", "int8", "tiling", "offload", "retry"}
        assert buttons["smaller"].text() == "Retry at 96×96" and buttons["smaller"].isEnabled()
        assert buttons["tiling"].isEnabled()
        assert buttons["offload"].isEnabled()
        if not torch.cuda.is_available():
            assert not buttons["int8"].isEnabled()
        assert "OutOfMemoryError" in window.banner.details.toPlainText()
        assert output_files(window) == []

        qtbot.mouseClick(buttons["smaller"], Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: bool(finished), timeout=WAIT_MS)
        (path,) = output_files(window)
        assert Image.open(path).size == (96, 96)
        handler.flush()
        log_text = (log_dir() / "sana-studio.log").read_text()
        assert "Traceback" in log_text and "OutOfMemoryError" in log_text
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def test_an_engine_error_shows_the_banner_and_the_next_run_works(qtbot, open_window):
    failures_left = [1]

    def hook(event, cancel):
        if type(event).__name__ == "Decoding" and failures_left[0]:
            failures_left[0] -= 1
            raise ValueError("decoder exploded")

    window = open_window(hooked_engine(hook))
    finished = record(window.state.job_finished)
    window.generate()
    qtbot.waitUntil(lambda: window.banner.isVisible() and not window.state.busy, timeout=WAIT_MS)
    assert "ValueError: decoder exploded" in window.banner.message.text()
    qtbot.mouseClick(window.banner.action_buttons()["retry"], Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: bool(finished), timeout=WAIT_MS)
    assert len(output_files(window)) == 1


# Keyboard ---------------------------------------------------------------------------------------


def test_keyboard_ctrl_enter_generates_esc_cancels_ctrl_s_saves_as_ctrl_comma_opens_settings(
        qtbot, open_window, monkeypatch, tmp_path):
    steps_done = [0]

    def hook(event, cancel):
        if type(event).__name__ == "Step":
            steps_done[0] = event.index

    window = open_window(hooked_engine(hook))
    window.activateWindow()
    started = record(window.state.job_started)
    cancelled = record(window.state.job_cancelled)
    finished = record(window.state.job_finished)

    window.form.prompt.setFocus()
    window.form.steps.setValue(1000)
    qtbot.keyClick(window.form.prompt, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    assert started or window.state.busy, "Ctrl+Enter from the prompt must generate"
    assert window.form.prompt.toPlainText() == "a red circle", "Ctrl+Enter must not type a newline"
    qtbot.waitUntil(lambda: steps_done[0] >= 2, timeout=WAIT_MS)
    qtbot.keyClick(window.form.prompt, Qt.Key.Key_Escape)
    qtbot.waitUntil(lambda: bool(cancelled), timeout=WAIT_MS)

    window.form.steps.setValue(3)
    qtbot.keyClick(window, Qt.Key.Key_Enter, Qt.KeyboardModifier.ControlModifier)  # keypad Enter too
    qtbot.waitUntil(lambda: bool(finished), timeout=WAIT_MS)

    target = tmp_path / "saved-as.jpg"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), ""))
    qtbot.keyClick(window, Qt.Key.Key_S, Qt.KeyboardModifier.ControlModifier)
    assert target.is_file() and Image.open(target).format == "JPEG"
    assert "a red circle" in Image.open(target).getexif()[0x9286]

    opened = []
    monkeypatch.setattr(SettingsDialog, "exec", lambda self: opened.append(self) or 0)
    qtbot.keyClick(window, Qt.Key.Key_Comma, Qt.KeyboardModifier.ControlModifier)
    assert len(opened) == 1


# Gallery ----------------------------------------------------------------------------------------


def test_the_gallery_shows_earlier_runs_and_its_actions_work(qtbot, open_window, user_dirs):
    folder = Settings().output_dir()
    folder.mkdir(parents=True)
    older = GenerationRequest(prompt="an earlier run", width=64, height=96, steps=9, seed=77)
    path = save_image(Image.new("RGB", (64, 96), "red"), folder / "earlier.png", older, "tiny-sana", "fp32")

    window = open_window()
    assert window.gallery.paths() == [path]
    window.gallery.wait_for_thumbnails()
    qtbot.waitUntil(lambda: not window.gallery.item(0).icon().isNull(), timeout=WAIT_MS)

    window.gallery.copy_prompt(path)
    assert QGuiApplication.clipboard().text() == "an earlier run"
    window.gallery.copy_image(path)
    assert QGuiApplication.clipboard().image().size().toTuple() == (64, 96)
    window.gallery.reuse(path)
    assert window.form.request() == older
    window.gallery.setCurrentRow(0)
    assert window.canvas.image.size().toTuple() == (64, 96)

    assert window.gallery.delete(path)
    assert not path.exists() and window.gallery.count() == 0
    assert list((user_dirs / ".local/share/Trash/files").iterdir())  # recoverable, not gone


# remedy button → (engine event at which the run fails once, generator attribute, values seen, setting, value)
MEMORY_REMEDIES = {
    "tiling": ("Decoding", "tiling", ["auto", "always"], "vae_tiling", "always"),
    "offload": ("Started", "offload_text_encoder", [False, True], "offload_text_encoder", True),
}


@pytest.mark.parametrize("remedy", MEMORY_REMEDIES)
def test_memory_remedies_reach_the_engine_on_retry(qtbot, open_window, remedy):
    """Retry with VAE tiling decodes in tiles; retry with the text encoder offloaded parks it."""
    event_name, attribute, expected, setting, value = MEMORY_REMEDIES[remedy]
    seen = []

    def hook(event, cancel):
        if type(event).__name__ == event_name:
            seen.append(getattr(window.session._worker._generator, attribute))
            if len(seen) == 1:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    window = open_window(hooked_engine(hook))
    finished = record(window.state.job_finished)
    window.generate()
    qtbot.waitUntil(lambda: window.banner.isVisible() and not window.state.busy, timeout=WAIT_MS)
    qtbot.mouseClick(window.banner.action_buttons()[remedy], Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: bool(finished), timeout=WAIT_MS)
    assert seen == expected
    assert window.settings[setting] == value


def test_an_8bit_text_encoder_setting_on_the_cpu_loads_in_16_bits_and_says_why(qtbot, open_window):
    window = open_window(text_encoder_8bit=True)
    qtbot.waitUntil(lambda: window.banner.isVisible(), timeout=WAIT_MS)
    text = window.banner.message.text()
    assert "the text encoder runs in 16 bits" in text and "CUDA" in text
    finished = record(window.state.job_finished)
    window.generate()
    qtbot.waitUntil(lambda: bool(finished), timeout=WAIT_MS)  # and the model works
    assert len(output_files(window)) == 1


def test_full_previews_show_a_decoded_image_every_kth_step(qtbot, open_window):
    window = open_window(preview_mode="full", preview_every=2)
    previews = record(window.state.preview_changed)
    finished = record(window.state.job_finished)
    window.generate()  # 64×64, 6 steps (the fixture's form)
    qtbot.waitUntil(lambda: bool(finished), timeout=WAIT_MS)
    widths = [image.width() for (image,) in previews]
    assert widths == [2, 64, 2, 64, 2, 2]  # steps 2 and 4; step 6 is the finished image, decoded anyway
