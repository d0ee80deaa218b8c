"""The app's pure parts: the settings schema and file, file naming, and SANA's size presets."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from app import settings as settings_module
from app.naming import image_paths, validate_pattern
from app.settings import SCHEMA, Settings, default_output_dir
from app.state import Progress
from engine.aspect_ratios import NATIVE_SIZES, closest_preset, presets, snap
from engine.request import GenerationRequest


@pytest.fixture
def user_dirs(tmp_path, monkeypatch):
    for name in ("HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("XDG_PICTURES_DIR", str(tmp_path / "pictures"))
    return tmp_path


# Settings ---------------------------------------------------------------------------------------


def test_every_setting_declares_a_default_its_schema_accepts_and_a_description():
    for setting in SCHEMA:
        assert setting.accepts(setting.default), setting.name
        assert setting.description.strip(), setting.name
    assert len({s.name for s in SCHEMA}) == len(SCHEMA)


def test_settings_live_in_the_user_config_dir_and_pictures_by_default(user_dirs):
    settings = Settings()
    assert settings.path == user_dirs / "xdg_config_home" / "sana-studio" / "settings.json"
    assert settings.output_dir() == default_output_dir() == user_dirs / "pictures" / "Sana Studio"


def test_saved_settings_load_back_as_versioned_json(user_dirs):
    settings = Settings()
    settings["theme"] = "light"
    settings["vae_tiling"] = "off"
    settings["form"] = {"prompt": "ünïcode ✓", "steps": 9}
    settings.remember_model("/models/a")
    settings.remember_model("/models/b")
    settings.remember_model("/models/a")
    settings.save()

    data = json.loads(settings.path.read_text(encoding="utf-8"))
    assert data["version"] == settings_module.SETTINGS_VERSION
    loaded = Settings.load()
    assert loaded.values() == settings.values()
    assert loaded["model_path"] == "/models/a" and loaded["recent_models"] == ["/models/a", "/models/b"]


def test_unknown_names_and_values_out_of_the_schema_are_refused_by_name():
    settings = Settings()
    with pytest.raises(KeyError, match="colour_scheme: unknown setting"):
        settings["colour_scheme"] = "dark"
    with pytest.raises(ValueError, match="theme: 'pink' is not allowed"):
        settings["theme"] = "pink"
    with pytest.raises(ValueError, match="preview_every"):
        settings["preview_every"] = 0
    with pytest.raises(ValueError, match=r"unknown \{colour\}"):
        settings["filename_pattern"] = "{colour}"


def test_a_damaged_settings_file_is_set_aside_and_defaults_are_used(user_dirs):
    path = Settings().path
    path.parent.mkdir(parents=True)
    path.write_text("{ not json")
    settings = Settings.load()
    assert settings.values() == Settings().values()
    assert path.with_suffix(".json.bad").read_text() == "{ not json"


def test_bad_values_in_the_file_fall_back_to_their_defaults_and_keep_the_rest(user_dirs):
    path = Settings().path
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"version": 1, "values": {"theme": "pink", "image_format": "webp", "gone": 1}}))
    settings = Settings.load()
    assert settings["theme"] == "dark" and settings["image_format"] == "webp"


def test_an_older_file_is_migrated_step_by_step(user_dirs, monkeypatch):
    def v1_to_v2(values):
        return {**values, "theme": "light" if values.pop("light_mode") else "dark"}

    def v2_to_v3(values):
        return {**values, "image_format": {"jpeg": "jpg"}.get(values["image_format"], values["image_format"])}

    monkeypatch.setattr(settings_module, "SETTINGS_VERSION", 3)
    monkeypatch.setattr(settings_module, "MIGRATIONS", {1: v1_to_v2, 2: v2_to_v3})
    path = Settings().path
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"version": 1, "values": {"light_mode": True, "image_format": "jpeg"}}))
    settings = Settings.load()
    assert settings["theme"] == "light" and settings["image_format"] == "jpg"


def test_a_file_from_a_newer_version_keeps_what_this_version_knows(user_dirs):
    path = Settings().path
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"version": 99, "values": {"theme": "light", "hologram": True}}))
    assert Settings.load()["theme"] == "light"


# File names -------------------------------------------------------------------------------------


REQUEST = GenerationRequest(prompt="A Cat, sleeping: on/the mat!", width=512, height=768, steps=12, seed=99)
WHEN = datetime(2025, 3, 4, 5, 6, 7)


def test_the_pattern_fills_every_token(tmp_path):
    pattern = "{date}_{time}_{seed}_{counter}_{prompt}_{model}_{width}x{height}_{steps}"
    (path,) = image_paths(tmp_path, pattern, ".png", REQUEST, "sana-1024", 1, WHEN)
    assert path.name == "2025-03-04_050607_99_00001_a_cat_sleeping_on_the_mat_sana-1024_512x768_12.png"


def test_the_counter_continues_from_the_images_in_the_folder_and_names_never_collide(tmp_path):
    for name in ("a.png", "b.jpg", "notes.txt"):
        (tmp_path / name).write_text("x")
    paths = image_paths(tmp_path, "{counter}", ".png", REQUEST, "m", 2, WHEN)
    assert [p.name for p in paths] == ["00003.png", "00004.png"]
    (tmp_path / "99.png").write_text("x")
    paths = image_paths(tmp_path, "{seed}", ".png", REQUEST, "m", 2, WHEN)
    assert [p.name for p in paths] == ["99-2.png", "99-3.png"]


@pytest.mark.parametrize("pattern, message", [
    ("", "must not be empty"),
    ("{date}/{seed}", "must not contain /"),
    ("{seed:08d}", "without a format spec"),
    ("{sede}", r"unknown \{sede\}"),
    ("{seed", "filename_pattern"),
])
def test_a_bad_pattern_is_named(pattern, message):
    with pytest.raises(ValueError, match=message):
        validate_pattern(pattern)


# Sizes ------------------------------------------------------------------------------------------


def test_presets_are_the_reference_pipelines_aspect_ratio_bins():
    from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import ASPECT_RATIO_512_BIN, ASPECT_RATIO_1024_BIN
    from diffusers.pipelines.pixart_alpha.pipeline_pixart_sigma import ASPECT_RATIO_2048_BIN
    from diffusers.pipelines.sana.pipeline_sana import ASPECT_RATIO_4096_BIN

    from engine.aspect_ratios import UNIT_SHAPES

    def sizes(native):  # every bucket before the request's 4096 limit drops some
        unit = native // 16
        return {(w * unit, h * unit) for h, w in UNIT_SHAPES}

    def reference(table):  # keys are height/width, values [height, width]
        return {(int(w), int(h)) for h, w in table.values()}

    assert sizes(2048) == reference(ASPECT_RATIO_2048_BIN)
    assert sizes(4096) == reference(ASPECT_RATIO_4096_BIN)
    assert reference(ASPECT_RATIO_1024_BIN) <= sizes(1024)
    assert reference(ASPECT_RATIO_512_BIN) <= sizes(512)


@pytest.mark.parametrize("native", NATIVE_SIZES + (128,))
def test_presets_are_requestable_multiples_of_32_and_include_the_native_square(native):
    found = presets(native)
    assert (native, native) in [(p.width, p.height) for p in found]
    for preset in found:
        GenerationRequest(prompt="", width=preset.width, height=preset.height)  # raises if not


def test_the_closest_preset_keeps_the_shape_and_snap_rounds_halves_up():
    assert (closest_preset(1024, 1920, 1080).width, closest_preset(1024, 1920, 1080).height) == (1344, 768)
    assert (closest_preset(512, 10, 10).width, closest_preset(512, 10, 10).height) == (512, 512)
    assert [snap(v) for v in (1, 400, 415, 10_000)] == [64, 416, 416, 4096]


def test_progress_rate_leaves_out_the_first_steps_warm_up():
    progress = Progress(step=11, total=21, elapsed=3.0, first_step_elapsed=1.0)
    assert progress.rate == pytest.approx(5.0) and progress.eta == pytest.approx(2.0)
    assert progress.text == "Step 11/21 · 5.00 it/s · ETA 0:02"
