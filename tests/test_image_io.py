import os

import pytest
from PIL import Image

from engine.errors import OutputError
from engine.image_io import format_parameters, numbered_paths, parse_parameters, read_request_fields, save_image
from engine.request import GenerationRequest

REQUEST = GenerationRequest(
    "a red circle, on a blue background", negative_prompt="blurry, dark", width=512, height=768,
    steps=14, guidance_scale=5.5, seed=1234, solver="euler",
)


def test_png_carries_the_exact_request_and_a1111_parameters(tmp_path):
    path = save_image(Image.new("RGB", (16, 24), "red"), tmp_path / "x.png", REQUEST, "tiny", "fp32")
    assert GenerationRequest.from_dict(read_request_fields(path)) == REQUEST
    with Image.open(path) as image:
        text = image.info["parameters"]
    assert text.splitlines()[0] == REQUEST.prompt
    assert "Sampler: Flow-Euler" in text and "Size: 512x768" in text and "Model: tiny" in text
    parsed = parse_parameters(text)
    for field in ("prompt", "negative_prompt", "width", "height", "steps", "guidance_scale", "seed", "solver"):
        assert parsed[field] == getattr(REQUEST, field), field


def test_a1111_parameters_from_another_tool_are_read():
    text = (
        "masterpiece, a castle\non a hill\n"
        "Negative prompt: lowres, bad anatomy\n"
        'Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 987654321, Size: 768x512, '
        'Model hash: abc123, Model: sd15, Lora hashes: "x: 1, y: 2", Version: v1.9'
    )
    fields = parse_parameters(text)
    assert fields == {
        "prompt": "masterpiece, a castle\non a hill",
        "negative_prompt": "lowres, bad anatomy",
        "steps": 30, "guidance_scale": 7.0, "seed": 987654321, "width": 768, "height": 512,
    }


def test_parameters_without_a_settings_line_are_all_prompt():
    assert parse_parameters("just a prompt") == {"prompt": "just a prompt"}
    assert format_parameters(REQUEST, "m", "fp16").count("\n") == 2


def test_failed_write_leaves_the_earlier_file_and_no_temporary(tmp_path):
    target = tmp_path / "keep.png"
    save_image(Image.new("RGB", (4, 4), "blue"), target, REQUEST, "m", "fp32")
    before = target.read_bytes()

    class Exploding:
        def save(self, *args, **kwargs):
            raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match="No space left"):
        save_image(Exploding(), target, REQUEST, "m", "fp32")
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["keep.png"]


def test_missing_or_unwritable_folder_and_unknown_format_are_named(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        save_image(Image.new("RGB", (4, 4)), tmp_path / "nope" / "x.png", REQUEST, "m", "fp32")
    with pytest.raises(OutputError, match="unsupported image format .gif"):
        save_image(Image.new("RGB", (4, 4)), tmp_path / "x.gif", REQUEST, "m", "fp32")
    # /proc takes no new files, even from root (CI runs as root, so permission bits would not do).
    with pytest.raises(OutputError, match="cannot write in /proc"):
        save_image(Image.new("RGB", (4, 4)), "/proc/x.png", REQUEST, "m", "fp32")
    assert not list(tmp_path.rglob("*.png"))


def test_jpeg_and_webp_keep_the_parameters_in_exif(tmp_path):
    for suffix in (".jpg", ".webp"):
        path = save_image(Image.new("RGB", (8, 8), "green"), tmp_path / f"x{suffix}", REQUEST, "m", "fp16")
        with Image.open(path) as image:
            comment = image.getexif().get(0x9286)
        assert comment is not None and REQUEST.prompt in str(comment)


def test_several_images_get_numbered_names(tmp_path):
    assert numbered_paths(tmp_path / "x.png", 1) == [tmp_path / "x.png"]
    assert numbered_paths(tmp_path / "x.png", 3) == [tmp_path / f"x-{i}.png" for i in (1, 2, 3)]


@pytest.mark.skipif(os.name != "posix", reason="file modes and the umask are POSIX")
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_saved_images_get_the_mode_any_new_file_gets(tmp_path, umask, mode):
    """Written through a temporary file, yet readable as the user's umask allows, not private."""
    previous = os.umask(umask)
    try:
        target = save_image(Image.new("RGB", (4, 4), "blue"), tmp_path / "x.png", REQUEST, "m", "fp32")
    finally:
        os.umask(previous)
    assert target.stat().st_mode & 0o777 == mode
    assert sorted(os.listdir(tmp_path)) == ["x.png"]
