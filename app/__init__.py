"""The Sana Studio window. Knows the engine only through its public API.

How the rooms connect:

    gui          QApplication, log file, settings → MainWindow
    main_window  the widgets (request_form, canvas, gallery, banner, settings_dialog) and the
                 keyboard; sends intents to the Session, redraws from the AppState's signals
    session      intents → the queue → the worker; worker reports → the state
    state        what is shown: model, queue, progress (a QObject with signals, UI thread)
    worker       the only caller of the engine, on its own QThread; saves finished images
    settings     the declared schema and its versioned JSON file; naming, failures, theme,
                 capabilities are the small pieces they use
"""
