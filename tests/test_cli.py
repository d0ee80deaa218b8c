"""`sana-studio generate` end to end: the same image as diffusers' SanaPipeline, and clear failures."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.cli import main
from engine.text_encoder import instruction_lines
from tests.numerics import psnr

PROMPT = "A Small Red Circle on the left and a large blue square on the right"
NEGATIVE = "a black background"


def reference_images(model_dir, width, height, steps, guidance, seed, num_images=1, solver="dpm"):
    from diffusers import FlowMatchEulerDiscreteScheduler, SanaPipeline

    pipeline = SanaPipeline.from_pretrained(model_dir, torch_dtype=torch.float32)
    if solver == "euler":
        pipeline.scheduler = FlowMatchEulerDiscreteScheduler(shift=pipeline.scheduler.config.flow_shift)
    return pipeline(
        prompt=PROMPT, negative_prompt=NEGATIVE, width=width, height=height, num_inference_steps=steps,
        guidance_scale=guidance, num_images_per_prompt=num_images,
        generator=torch.Generator("cpu").manual_seed(seed), use_resolution_binning=False,
        complex_human_instruction=instruction_lines(),
    ).images


def run_cli(*args: str) -> int:
    return main(["generate", *args])


@pytest.mark.parametrize("width, height, solver", [(64, 64, "dpm"), (96, 64, "dpm"), (64, 128, "euler")])
def test_generate_gives_diffusers_image(tiny_model_dir, tmp_path, width, height, solver):
    output = tmp_path / "out.png"
    code = run_cli(
        "--model", str(tiny_model_dir), "--prompt", PROMPT, "--negative-prompt", NEGATIVE,
        "--width", str(width), "--height", str(height), "--steps", "6", "--guidance", "4.5",
        "--seed", "42", "--solver", solver, "--device", "cpu", "--precision", "fp32", "--output", str(output),
    )
    assert code == 0
    ours = np.asarray(Image.open(output).convert("RGB"))
    reference = np.asarray(reference_images(tiny_model_dir, width, height, 6, 4.5, 42, solver=solver)[0])
    assert ours.shape == (height, width, 3)
    assert ours.std() > 1.0, "a flat image would match trivially"
    assert psnr(ours, reference) >= 40.0


def test_several_images_match_diffusers_batch_and_are_numbered(tiny_model_dir, tmp_path):
    code = run_cli(
        "--model", str(tiny_model_dir), "--prompt", PROMPT, "--negative-prompt", NEGATIVE,
        "--width", "64", "--height", "64", "--steps", "3", "--seed", "7", "--num-images", "2",
        "--device", "cpu", "--precision", "fp32", "--output", str(tmp_path / "batch.png"),
    )
    assert code == 0
    references = reference_images(tiny_model_dir, 64, 64, 3, 4.5, 7, num_images=2)
    for index, reference in enumerate(references, start=1):
        ours = np.asarray(Image.open(tmp_path / f"batch-{index}.png").convert("RGB"))
        assert psnr(ours, np.asarray(reference)) >= 40.0


def test_png_text_chunk_carries_the_parameters(tiny_model_dir, tmp_path):
    output = tmp_path / "meta.png"
    assert run_cli("--model", str(tiny_model_dir), "--prompt", "a cat", "--width", "64", "--height", "64",
                   "--steps", "2", "--seed", "5", "--device", "cpu", "--output", str(output)) == 0
    with Image.open(output) as image:
        parameters = image.info["parameters"]
        exact = json.loads(image.info["sana_studio"])
    assert parameters.startswith("a cat\n")
    assert "Steps: 2, Sampler: Flow-DPM-Solver, CFG scale: 4.5, Seed: 5, Size: 64x64, Model: tiny-sana" in parameters
    assert exact["request"]["seed"] == 5 and exact["precision"] == "fp32"


def test_guidance_defaults_to_the_models_own(tiny_model_dir, tmp_path, monkeypatch):
    """SANA's 4.5 for a checkpoint, the demo's own guidance (engine/demo.py) for the demo; an explicit
    --guidance wins over both."""
    from app import capabilities
    from engine.demo import GUIDANCE

    def cfg_scale(*extra: str) -> float:
        output = tmp_path / "guidance.png"
        assert run_cli("--model", str(tiny_model_dir), "--prompt", "a cat", "--width", "64", "--height", "64",
                       "--steps", "1", "--seed", "5", "--device", "cpu", "--output", str(output), *extra) == 0
        with Image.open(output) as image:
            return json.loads(image.info["sana_studio"])["request"]["guidance_scale"]

    assert cfg_scale() == 4.5
    monkeypatch.setattr(capabilities, "demo_model_path", lambda: str(tiny_model_dir))  # as if it were the demo
    assert GUIDANCE != 4.5 and cfg_scale() == GUIDANCE
    assert cfg_scale("--guidance", "3") == 3.0


@pytest.mark.parametrize(
    "args, words",
    [
        (["--width", "100"], "width: 100 is not a multiple of 32"),
        (["--height", "8192"], "height: 8192 is outside 64..4096"),
        (["--steps", "0"], "steps: 0 is outside 1..1000"),
        (["--guidance", "-1"], "guidance_scale: -1.0 is outside 0..50"),
        (["--output", "/nonexistent-folder/x.png"], "the folder /nonexistent-folder does not exist"),
        (["--output", "picture.bmp"], "must end in .png"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tiny_model_dir, tmp_path, capsys, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    base = {"--model": str(tiny_model_dir), "--prompt": "x", "--output": str(tmp_path / "x.png")}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    code = run_cli(*[item for pair in base.items() for item in pair], "--device", "cpu")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [f"sana-studio: error: {err[0].split('error: ', 1)[1]}"] and words in err[0]
    assert list(tmp_path.iterdir()) == []


def test_bad_model_folder_fails_with_one_line_and_no_file(tiny_model_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    shutil.rmtree(broken / "text_encoder")
    code = run_cli("--model", str(broken), "--prompt", "x", "--device", "cpu", "--output", str(tmp_path / "x.png"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("sana-studio: error: ") and "text_encoder/" in err[-1]
    assert not (tmp_path / "x.png").exists()


def test_unwritable_output_folder_is_refused_before_loading(tiny_model_dir, capsys):
    # /proc takes no new files, even from root (CI runs as root, so permission bits would not do).
    code = run_cli("--model", str(tiny_model_dir), "--prompt", "x", "--output", "/proc/x.png")
    assert code == 2 and "--output /proc/x.png: the folder /proc is not writable" in capsys.readouterr().err


def test_console_script_runs_generate(tiny_model_dir, tmp_path):
    script = Path(sys.executable).with_name("sana-studio")
    output = tmp_path / "script.png"
    result = subprocess.run(
        [str(script), "generate", "--model", str(tiny_model_dir), "--prompt", "a dog", "--width", "64",
         "--height", "64", "--steps", "2", "--seed", "1", "--device", "cpu", "--output", str(output)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(output) and output.is_file()
    assert "step 2/2" in result.stderr


def test_an_8bit_text_encoder_on_the_cpu_falls_back_to_16_bits_and_says_so(tiny_model_dir, tmp_path, capsys):
    """bitsandbytes' 8-bit weights need CUDA: on the CPU the run goes on in 16 bits, and one line
    says why; the image is the very one a plain run gives."""
    plain, eight_bit = tmp_path / "plain.png", tmp_path / "eight_bit.png"
    common = ["--model", str(tiny_model_dir), "--prompt", PROMPT, "--width", "64", "--height", "64", "--steps", "2",
              "--seed", "3", "--device", "cpu"]
    assert run_cli(*common, "--output", str(plain)) == 0
    capsys.readouterr()
    assert run_cli(*common, "--text-encoder-8bit", "--output", str(eight_bit)) == 0
    err = capsys.readouterr().err
    assert "the text encoder runs in 16 bits: 8-bit weights need a CUDA GPU" in err
    assert np.array_equal(np.asarray(Image.open(plain)), np.asarray(Image.open(eight_bit)))


def test_a_too_old_triton_leaves_the_kernels_off_and_generate_running(tiny_model_dir, tmp_path):
    """torch 2.4–2.7 bring Triton 3.0–3.3, too old for the kernels. Importing them used to raise an
    AttributeError that stopped the app from starting, on the CPU too; now the engine imports,
    names the reason, and draws on the plain-torch path. The child process makes Triton report
    3.3.1 before anything of ours is imported."""
    output = tmp_path / "old_triton.png"
    child = (
        "import sys, triton; triton.__version__ = '3.3.1'\n"
        "from engine import accelerate\n"
        "import torch; print('reason:', accelerate.fused_kernels_unavailable(torch.device('cuda')))\n"
        "from app.cli import main\n"
        f"sys.exit(main(['generate', '--model', {str(tiny_model_dir)!r}, '--prompt', 'a dog', '--width', '64',"
        f" '--height', '64', '--steps', '2', '--seed', '1', '--device', 'cpu', '--output', {str(output)!r}]))\n"
    )
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert "reason: Triton cannot be used: Triton 3.3.1 is older than 3.4, which the fused kernels need" in result.stdout
    assert output.is_file() and "Traceback" not in result.stderr
