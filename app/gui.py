"""The window's front door: the QApplication, the log file, the settings, then the main window."""

from __future__ import annotations

import logging
import sys
from logging.handlers import RotatingFileHandler

from PySide6.QtGui import QGuiApplication, QIcon
from PySide6.QtWidgets import QApplication

from resources import resource_path

from . import theme
from .main_window import MainWindow
from .session import Session
from .settings import Settings, log_dir
from .worker import Engine

log = logging.getLogger("app")
LOG_FORMAT = "%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"


def run(model_path: str | None = None) -> int:
    """Open the window on `model_path`, else the last used model, else the demo model."""
    app = QApplication.instance() or QApplication(sys.argv)
    app.setApplicationName("Sana Studio")
    app.setOrganizationName("Sana Studio")
    # Wayland and the desktop shells match the window to sana-studio.desktop (and its icon) by this name.
    QGuiApplication.setDesktopFileName("sana-studio")
    app.setWindowIcon(icon())
    setup_logging()
    settings = Settings.load()
    theme.apply(app, settings["theme"])
    window = create_window(settings)
    window.show()
    window.start(model_path)
    try:
        return app.exec()
    finally:
        window.session.shutdown()  # however the loop ended, the engine thread ends before Python


def create_window(settings: Settings, engine: Engine | None = None) -> MainWindow:
    window = MainWindow(Session(settings, engine=engine))
    window.setWindowIcon(icon())
    return window


def icon() -> QIcon:
    return QIcon(str(resource_path("icons", "sana-studio.png")))


def setup_logging() -> logging.Handler:
    """Write the app's log (tracebacks included) to the user log dir; returns the handler."""
    folder = log_dir()
    folder.mkdir(parents=True, exist_ok=True)
    handler = RotatingFileHandler(folder / "sana-studio.log", maxBytes=2**20, backupCount=3, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(min(root.level or logging.INFO, logging.INFO))

    def log_uncaught(kind, error, trace):
        # A bug in a slot must end in the log, not in a closed window with the user's work.
        log.critical("uncaught exception", exc_info=(kind, error, trace))
        sys.__excepthook__(kind, error, trace)

    sys.excepthook = log_uncaught
    return handler
