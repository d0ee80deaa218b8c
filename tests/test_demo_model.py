"""The bundled demo model draws what held-out captions ask for, judged by an honest pixel checker.

The checker (training/demo/judge.py) is tested first on ground-truth renders, where it must score
100%, and on images paired with the wrong caption, where it must fail: only then does its score
on the model's images mean anything.
"""

import random

import pytest
import torch

from engine.demo import GUIDANCE, demo_model_path
from engine.errors import CheckpointError
from resources import resource_path
from training.demo.judge import judge, summarize
from training.demo.scenes import (
    COLOURS,
    SHAPES,
    Scene,
    SceneObject,
    held_out_scenes,
    place,
    render,
    render_scenes,
    sample_scene,
)

DEMO = resource_path("demo_model")
SIZE = 256
MIN_PLACED, MIN_BACKGROUNDS, MIN_SHAPES = 0.9, 0.9, 0.8
MIN_SHORT_PLACED = {"with comma": 0.8, "without comma": 0.6}  # short prompts' objects drawn
MAX_MEGABYTES = 50
MIN_PSNR_DB, MIN_PSNR_PAIRS = 30.0, 20


def to_pixels(images: torch.Tensor):
    return ((images + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def ground_truth(scenes: list[Scene], seed: int = 0):
    return to_pixels(render_scenes(scenes, SIZE, random.Random(seed)))


def test_checker_scores_ground_truth_renders_fully():
    rng = random.Random(7)
    scenes = held_out_scenes(16) * 2 + [sample_scene(rng) for _ in range(48)]
    verdicts = [judge(image, scene) for image, scene in zip(ground_truth(scenes), scenes)]
    summary = summarize(verdicts)
    assert summary["objects"] > 100
    assert summary["placed_fraction"] == 1.0
    assert summary["shape_fraction"] == 1.0
    assert summary["background_fraction"] == 1.0


def test_checker_fails_images_paired_with_another_caption():
    rng = random.Random(8)
    scenes = [sample_scene(rng) for _ in range(40)]
    images = ground_truth(scenes)
    shuffled = scenes[1:] + scenes[:1]
    summary = summarize([judge(image, scene) for image, scene in zip(images, shuffled)])
    assert summary["placed_fraction"] < 0.3
    assert summary["background_fraction"] < 0.3


def test_checker_finds_no_objects_on_a_plain_background():
    scenes = held_out_scenes(12)
    plain = to_pixels(render([Scene(s.background, ()) for s in scenes], [[] for _ in scenes], SIZE))
    summary = summarize([judge(image, scene) for image, scene in zip(plain, scenes)])
    assert summary["placed"] == 0 and summary["background_fraction"] == 1.0


def test_checker_reads_each_shape_and_rejects_the_others():
    rng = random.Random(9)
    for shape in SHAPES:
        for size in ("small", "large"):
            scene = Scene("white", (SceneObject("blue", shape, size, "center"),))
            image = to_pixels(render([scene], [place(scene, rng)], SIZE))[0]
            (verdict,) = judge(image, scene).objects
            assert verdict.placed and verdict.shape == shape, (shape, size, verdict.fill)
            for other in set(SHAPES) - {shape}:
                wrong = Scene("white", (SceneObject("blue", other, size, "center"),))
                assert not judge(image, wrong).objects[0].shape_right


def test_checker_places_objects_by_their_named_position_only():
    scene = Scene("black", (SceneObject("red", "circle", "large", "left"),))
    image = ground_truth([scene])[0]
    for position in ("right", "top", "bottom", "center"):
        moved = Scene("black", (SceneObject("red", "circle", "large", position),))
        assert not judge(image, moved).objects[0].placed
    recoloured = Scene("black", (SceneObject(next(c for c in COLOURS if c not in ("red", "black")),
                                             "circle", "large", "left"),))
    assert not judge(image, recoloured).objects[0].placed


def test_demo_model_path_names_a_missing_model(monkeypatch):
    monkeypatch.setattr("engine.demo.DEMO_FOLDER", "no_such_demo_model")
    with pytest.raises(CheckpointError, match="bundled demo model is missing"):
        demo_model_path()


@pytest.fixture(scope="module")
def demo_model():
    from engine.model import load_model

    return load_model(demo_model_path(), device="cpu")


def test_bundled_demo_model_fits_the_size_budget(demo_model):
    megabytes = sum(f.stat().st_size for f in DEMO.rglob("*") if f.is_file()) / 1e6
    assert megabytes <= MAX_MEGABYTES
    assert demo_model.native_size == SIZE


@pytest.fixture(scope="module")
def held_out_runs(demo_model):
    """The 16 held-out captions × 2 seeds, in float and in W8A8 INT8: 64 generations at 256², 20
    steps, at the demo's own guidance (the app's default for it), about a minute on 2 cores. One run
    serves the three tests below."""
    from training.demo.evaluate import judge_held_out

    return {precision: judge_held_out(demo_model, captions=16, seeds=(0, 1), guidance=GUIDANCE, steps=20,
                                      precision=precision)
            for precision in ("fp32", "int8")}


def check_captions_followed(verdicts, record_property, label: str) -> None:
    from training.demo.evaluate import report

    result = report(verdicts)
    failures = [d for d in result["images_detail"]
                if not d["background_right"] or not all(o["placed"] for o in d["objects"])]
    summary = {k: v for k, v in result.items() if k != "images_detail"}
    record_property(f"demo_held_out_{label}", summary)
    print(f"demo model, held-out captions, {label}: {summary}")
    assert result["images"] == 32
    assert result["placed_fraction"] >= MIN_PLACED, (summary, failures)
    assert result["background_fraction"] >= MIN_BACKGROUNDS, (summary, failures)
    assert result["shape_fraction"] >= MIN_SHAPES, summary


@pytest.mark.slow
def test_bundled_demo_model_puts_colours_where_held_out_captions_say(held_out_runs, record_property):
    """Colours at their named positions and backgrounds ≥ 90%, shapes told apart by their fill
    ≥ 80% (the issue's bars). The shipped weights: 100%, 100% and 84% of shapes (squares 13 of 16,
    stars 5 of 12; in INT8 the same)."""
    check_captions_followed(held_out_runs["fp32"][0], record_property, "fp32")


@pytest.mark.slow
def test_bundled_demo_model_follows_held_out_captions_in_int8(held_out_runs, record_property):
    """The same caption test with the DiT in W8A8 (the CPU reference path of quant/)."""
    check_captions_followed(held_out_runs["int8"][0], record_property, "int8")


@pytest.mark.slow
def test_int8_images_stay_within_30_db_of_float(held_out_runs, record_property):
    """Issue #5's fidelity bar: INT8 vs float over 20 prompt × seed pairs, every pair ≥ 30 dB PSNR
    (measured with the shipped weights: 48.6 dB at worst, 56.0 dB on average)."""
    import numpy as np

    pairs = list(zip(held_out_runs["fp32"][1], held_out_runs["int8"][1]))[:MIN_PSNR_PAIRS]
    from tests.numerics import psnr

    values = []
    for float_image, int8_image in pairs:
        assert np.asarray(float_image).shape == np.asarray(int8_image).shape == (SIZE, SIZE, 3)
        values.append(psnr(float_image, int8_image))
    record_property("int8_psnr_db", [round(p, 1) for p in values])
    print(f"INT8 vs float PSNR over {len(values)} pairs: min {min(values):.1f} dB, mean {np.mean(values):.1f} dB")
    assert len(values) == MIN_PSNR_PAIRS
    assert min(values) >= MIN_PSNR_DB, values


def short_prompts(comma: bool) -> list[tuple[str, Scene]]:
    """Prompts that name only colour, shape and background, as people type them: the issue's own
    example first, then two seeded colour pairs per shape. `comma`: the grammar's comma before the
    background, as in the training captions; people mostly leave it out."""
    rng = random.Random("short-prompts")
    scenes = [Scene("blue", (SceneObject("red", "circle", None, None),))]
    for shape in SHAPES:
        for _ in range(2):
            colour, background = rng.sample(COLOURS, 2)
            scenes.append(Scene(background, (SceneObject(colour, shape, None, None),)))
    return [(s.caption() if comma else s.caption().replace(", on ", " on "), s) for s in scenes]


def test_short_prompts_are_judged_as_placed_anywhere():
    (prompt, scene), *_ = short_prompts(comma=False)
    assert prompt == "a red circle on a blue background"
    rng = random.Random(3)
    for position in ("left", "top", "center"):
        drawn = Scene("blue", (SceneObject("red", "circle", "large", position),))
        image = to_pixels(render([drawn], [place(drawn, rng)], SIZE))[0]
        (verdict,) = judge(image, scene).objects
        assert verdict.placed and verdict.shape_right
    assert not judge(image, Scene("blue", (SceneObject("green", "circle", None, None),))).objects[0].placed


@pytest.mark.slow
def test_short_prompts_draw_their_objects(demo_model, record_property):
    """Training captions leave sizes and places unsaid now and then (scenes.loose_caption), so the
    demo draws "a red circle on a blue background" — the issue's own example, asserted at both
    seeds. Short prompts in general are weaker than full captions. Measured with the shipped
    weights, objects drawn: 16 of 18 with the grammar's comma before the background, 12 of 18
    without it (training captions always had it). The bars below are floors against regression,
    under the held-out bars on purpose: raising them is the next training's work."""
    from training.demo.evaluate import judge_prompts, report

    results = {}
    for comma in (True, False):
        verdicts, _ = judge_prompts(demo_model, short_prompts(comma), guidance=GUIDANCE, steps=20)
        summary = {k: v for k, v in report(verdicts).items() if k != "images_detail"}
        results["with comma" if comma else "without comma"] = summary
        assert summary["images"] == 18 and summary["background_fraction"] >= MIN_BACKGROUNDS, summary
        if not comma:
            example = verdicts[:2]  # "a red circle on a blue background", seeds 0 and 1
            assert all(v.background_right and v.objects[0].shape_right for v in example), example
    record_property("demo_short_prompts", results)
    print(f"demo model, short prompts: {results}")
    assert results["with comma"]["placed_fraction"] >= MIN_SHORT_PLACED["with comma"], results
    assert results["without comma"]["placed_fraction"] >= MIN_SHORT_PLACED["without comma"], results


def test_a_perfect_autoencoder_scores_every_shape_right():
    """The autoencoder's own score (logged by training after its stage) is the checker on
    encode → decode: with an identity in place of the autoencoder it must be 100%."""
    from torch import nn

    from training.demo.evaluate import judge_reconstructions

    class Identity(nn.Module):
        def __init__(self):
            super().__init__()
            self.anchor = nn.Parameter(torch.zeros(1))  # device and dtype for the renders

        def encode(self, images):
            return images

        def decode(self, latents):
            return latents

    summary = judge_reconstructions(Identity(), SIZE, scenes=24)
    assert summary["objects"] >= 24 and summary["shape_fraction"] == 1.0 and summary["placed_fraction"] == 1.0
    assert sum(total for _, total in summary["shapes_right_by_shape"].values()) == summary["objects"]


def test_the_bundled_autoencoder_keeps_colours_positions_and_most_shapes(demo_model, record_property):
    """Measured with the shipped weights: placed 100%, backgrounds 100%, shapes 90% (all 13 misses
    are stars: their points are lost). What it loses no DiT can put back: the ceiling of the
    held-out shape score."""
    from training.demo.evaluate import judge_reconstructions

    summary = judge_reconstructions(demo_model.dcae, SIZE, scenes=64)
    record_property("autoencoder_alone", summary)
    print(f"bundled autoencoder alone: {summary}")
    assert summary["placed_fraction"] >= MIN_PLACED and summary["background_fraction"] >= MIN_BACKGROUNDS
    assert summary["shape_fraction"] >= 0.85, summary
