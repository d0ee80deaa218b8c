"""The demo model's training code, on the CPU at toy scale: data, tokenizer, text path, a --quick
run that the engine loads and generates from, resumption, and the diffusers layout of its export."""

import dataclasses
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.generator import Generator
from engine.model import load_model
from engine.request import GenerationRequest
from engine.text_encoder import TextEncoder, instruction_lines
from resources import resource_path
from tests.numerics import rel_err
from training.demo import train
from training.demo.export import _storage
from training.demo.scenes import (
    COLOURS,
    HELD_OUT_MODULUS,
    PHRASES,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    SceneObject,
    held_out_scenes,
    loose_caption,
    parse_caption,
    place,
    render_scenes,
    sample_scene,
)
from training.demo.tokenizer import SPECIAL_TOKENS, train_tokenizer

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = {
    "transformer": "diffusion_pytorch_model.safetensors",
    "vae": "diffusion_pytorch_model.safetensors",
    "text_encoder": "model.safetensors",
}


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer("\n".join(instruction_lines()))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-quick")
    status = train.main(["--quick", "--device", "cpu", "--out", str(out), "--eval-captions", "0"])
    return status, out


def test_training_never_draws_a_held_out_scene():
    rng = random.Random(0)
    drawn = [sample_scene(rng) for _ in range(5000)]
    assert not any(s.held_out for s in drawn)
    held_out = held_out_scenes(64)
    assert all(s.held_out for s in held_out)
    assert not {s.key() for s in held_out} & {s.key() for s in drawn}
    # Held out is a property of the scene, not of its phrasing: any object order stays held out.
    for scene in held_out:
        assert Scene(scene.background, tuple(reversed(scene.objects))).held_out
    # About one scene in HELD_OUT_MODULUS of the whole space is held out.
    share = sum(_unfiltered_scene(rng).held_out for _ in range(20000)) / 20000
    assert abs(share - 1 / HELD_OUT_MODULUS) < 0.005


def _unfiltered_scene(rng):
    background = rng.choice(COLOURS)
    positions = rng.sample(tuple(POSITIONS), rng.randint(1, 3))
    return Scene(background, tuple(
        SceneObject(rng.choice([c for c in COLOURS if c != background]), rng.choice(SHAPES),
                    rng.choice(tuple(SIZES)), p)
        for p in positions
    ))


def test_grammar_covers_every_word_and_reads_back():
    rng = random.Random(2)
    scenes = [sample_scene(rng) for _ in range(3000)]
    text = " ".join(s.caption() for s in scenes)
    for word in [*COLOURS, *SHAPES, *SIZES, *PHRASES.values()]:
        assert word in text
    assert {len(s.objects) for s in scenes} == {1, 2, 3}
    assert "on an orange background" in text and "on a orange" not in text
    for scene in scenes[:200]:
        assert parse_caption(scene.caption()) == scene
    with pytest.raises(ValueError):
        parse_caption("a cat sleeping on a sunny windowsill")


def test_objects_never_overlap_nor_take_the_background_colour():
    rng = random.Random(3)
    for _ in range(3000):
        scene = sample_scene(rng)
        assert all(o.colour != scene.background for o in scene.objects)
        assert len({o.position for o in scene.objects}) == len(scene.objects)
        boxes = [(p.x - p.radius, p.y - p.radius, p.x + p.radius, p.y + p.radius) for p in place(scene, rng)]
        for i, a in enumerate(boxes):
            assert 0 <= a[0] and 0 <= a[1] and a[2] <= 1 and a[3] <= 1
            for b in boxes[i + 1:]:
                gap = max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])
                assert gap >= 4 / 256  # pixels at 256²


def test_rendering_is_seeded_and_device_independent_in_shape():
    scenes = held_out_scenes(6)
    first = render_scenes(scenes, 128, random.Random(5))
    again = render_scenes(scenes, 128, random.Random(5))
    other = render_scenes(scenes, 128, random.Random(6))
    assert first.shape == (6, 3, 128, 128) and first.dtype == torch.float32
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.min() >= -1 and first.max() <= 1


def test_tokenizer_follows_gemma_conventions(tokenizer):
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == list(SPECIAL_TOKENS)
    assert tokenizer.pad_token_id == 0 and tokenizer.bos_token_id == 2
    batch = tokenizer(["a small red star in the center, on a white background"], padding="max_length", max_length=40)
    ids = batch.input_ids[0]
    assert ids[0] == 2 and ids[-1] == 0 and batch.attention_mask[0][-1] == 0
    instruction = tokenizer.encode("\n".join(instruction_lines()))
    assert tokenizer.unk_token_id not in instruction and len(instruction) < 300
    assert tokenizer.decode(tokenizer.encode("Any text, even 🙂 this."), skip_special_tokens=True) == "Any text, even 🙂 this."


def tiny_gemma(tokenizer):
    """A two-layer Gemma-2 on the demo tokenizer, seeded: for the text-path tests."""
    from transformers import Gemma2Config, Gemma2Model

    torch.manual_seed(0)
    return Gemma2Model(Gemma2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, pad_token_id=0, eos_token_id=1, bos_token_id=2, use_cache=False))


def test_training_text_path_is_the_engine_encoder_with_gradients(tokenizer):
    encoder = TextEncoder(tiny_gemma(tokenizer).eval(), tokenizer)
    prompts = ["a large blue square on the left, on a black background",
               "A small RED circle at the top and a large green star on the right, on a white background"]
    for with_instruction in (True, False):
        reference, reference_mask = encoder.encode(prompts, with_instruction)
        ours, mask = train.encode_with_grad(encoder, prompts, with_instruction)
        assert ours.shape == (2, 300, 32) and torch.equal(mask, reference_mask)
        real = mask.bool()
        assert 2 < real.sum(1).min() < real.sum(1).max() < 60  # two lengths of prompt, then padding
        # where the DiT reads: the engine's numbers (Gemma ran on fewer positions: fp32 rounding only)
        assert rel_err(ours[real], reference[real]) < 1e-5
        # padding past the longest prompt, which Gemma did not run (the DiT masks it out): zeros
        assert (ours[:, real.sum(1).max():] == 0).all()
        assert ours.requires_grad
        ours.square().mean().backward()
        assert encoder.model.embed_tokens.weight.grad.abs().sum() > 0


def test_caption_tokenizer_gives_the_engine_tokens_of_grammar_captions(tokenizer):
    encoder = TextEncoder(tiny_gemma(tokenizer), tokenizer)  # the model is not run: tokens only
    rng = random.Random(7)
    captions = [sample_scene(rng).caption() for _ in range(400)] + ["A Large RED Star in the center, on a blue background "]
    captions += [loose_caption(sample_scene(rng), rng, unsaid=0.5) for _ in range(100)]
    fast = train.CaptionTokenizer(encoder)
    encoder.tokenize([""], with_instruction=False)  # leaves padding to 300 set on transformers' tokenizer
    tail_ids, tail_mask = fast.tails(captions)
    engine = encoder.tokenize(captions, with_instruction=True)
    head, tail = len(fast.head), tail_ids.shape[1]
    assert engine["input_ids"].shape[1] == fast.length and head + tail <= fast.length
    assert torch.equal(engine["input_ids"][:, :head], torch.tensor([fast.head] * len(captions)))
    assert torch.equal(engine["input_ids"][:, head:head + tail], tail_ids)
    assert (engine["input_ids"][:, head + tail:] == fast.pad).all()
    assert engine["attention_mask"][:, :head].all()
    assert torch.equal(engine["attention_mask"][:, head:head + tail], tail_mask)
    assert not engine["attention_mask"][:, head + tail:].any()
    assert (tail_ids[tail_mask == 0] == fast.pad).all()  # padding in the tails too


def test_captions_after_a_shared_instruction_give_the_full_runs_values_and_gradients(tokenizer):
    """The instruction run once and cached, the captions after it: what the full run gives, where
    the DiT reads (mask 1), and the same gradients for Gemma's weights (fp32 rounding only)."""
    gemma = tiny_gemma(tokenizer)
    encoder = TextEncoder(gemma, tokenizer)
    tokens = train.CaptionTokenizer(encoder)
    rng = random.Random(3)
    captions = [sample_scene(rng).caption() for _ in range(6)]
    weights = torch.randn(6, 300, 32, generator=torch.Generator().manual_seed(1))

    def values_and_gradients(embed):
        gemma.zero_grad()
        hidden, mask = embed()
        (hidden * weights * mask[..., None]).sum().backward()
        return hidden.detach(), mask, [p.grad.clone() for p in gemma.parameters()]

    full, full_mask, full_grads = values_and_gradients(lambda: train.encode_with_grad(encoder, captions, True))
    cached, mask, grads = values_and_gradients(lambda: train.embed_captions_with_grad(encoder, tokens, captions))
    assert torch.equal(mask, full_mask)
    real = mask.bool()
    assert real.sum(1).min() < real.sum(1).max()  # captions of different lengths, padded
    assert rel_err(cached[real], full[real]) < 1e-5
    for ours, reference in zip(grads, full_grads, strict=True):
        assert rel_err(ours, reference) < 1e-5


def test_loose_captions_leave_out_sizes_and_positions_but_never_say_anything_wrong():
    rng = random.Random(11)
    scenes = [sample_scene(rng) for _ in range(300)]
    assert [loose_caption(s, rng, unsaid=0.0) for s in scenes] == [s.caption() for s in scenes]
    left_out = {"size": 0, "position": 0}
    for scene in scenes:
        caption = loose_caption(scene, rng, unsaid=0.15)
        head, background = caption.rsplit(", on ", 1)
        assert background == f"{'an' if scene.background[0] in 'aeiou' else 'a'} {scene.background} background"
        phrases = re.split(r", | and ", head)
        assert len(phrases) == len(scene.objects)
        for phrase, obj in zip(phrases, scene.objects, strict=True):
            said_size = f"a {obj.size} " in phrase
            said_position = phrase.endswith(PHRASES[obj.position])
            said = dataclasses.replace(obj, size=obj.size if said_size else None,
                                       position=obj.position if said_position else None)
            assert phrase == said.phrase()  # what it says is the scene's own
            left_out["size"] += not said_size
            left_out["position"] += not said_position
    objects = sum(len(s.objects) for s in scenes)
    assert 0.08 * objects < left_out["size"] < 0.25 * objects
    assert 0.08 * objects < left_out["position"] < 0.25 * objects


def test_caption_dropout_puts_the_unconditional_prompt_in_its_place(tmp_path):
    args = train._parse(["--quick", "--device", "cpu", "--out", str(tmp_path)])
    run = train.Run(args)
    captions = [s.caption() for s in held_out_scenes(4)]
    dropped = [False, True, False, True]
    with torch.no_grad():
        text, mask = run._caption_batch(captions, dropped)
        conditional, conditional_mask = run.text.encode([captions[0], captions[2]], with_instruction=True)
        empty, empty_mask = run.text.encode([""], with_instruction=False)
    real = conditional_mask.bool()
    assert rel_err(text[0][real[0]], conditional[0][real[0]]) < 1e-5
    assert rel_err(text[2][real[1]], conditional[1][real[1]]) < 1e-5
    assert rel_err(text[1, :1], empty[0, :1]) < 1e-5 and torch.equal(text[1], text[3])
    assert torch.equal(mask[1], empty_mask[0]) and mask[1].sum() == 1  # BOS alone
    assert torch.equal(mask[2], conditional_mask[1])


def test_flow_sigmas_follow_the_shifted_logit_normal(tmp_path):
    run = train.Run(train._parse(["--quick", "--device", "cpu", "--out", str(tmp_path)]))
    sigma = run.scheduler_sigmas(20000)
    assert 0 < sigma.min() and sigma.max() < 1
    shift = run.plan.flow_shift
    # The median of logit-normal(0, 1) is 1/2; the shift maps it to s/(1 + s).
    assert abs(sigma.median().item() - shift / (1 + shift)) < 0.01


def test_fp16_export_keeps_only_out_of_range_tensors_in_fp32():
    assert _storage(torch.randn(4, 4)).dtype == torch.float16
    assert _storage(torch.tensor([1.0, 70000.0])).dtype == torch.float32
    assert _storage(torch.arange(3)).dtype == torch.int64


def test_quick_run_trains_exports_and_the_engine_generates_from_it(quick_run):
    status, out = quick_run
    assert status == 0
    log = json.loads((out / train.LOG).read_text())
    assert [e["step"] for e in log["ae"]] == [1, 2, 3] and [e["step"] for e in log["dit"]] == [1, 2, 3]
    assert all(0 < e["loss"] < 100 for e in log["ae"] + log["dit"])
    assert log["scaling_factor"] > 0
    judged = log["autoencoder_eval"]  # the autoencoder's own score, logged when its stage ends
    assert judged["images"] == 4 and 0.0 <= judged["shape_fraction"] <= 1.0
    model = load_model(out / train.MODEL_FOLDER, device="cpu")
    assert model.native_size == 64
    assert model.scheduler_config.flow_shift == train.Plan().flow_shift
    assert model.dcae.config.scaling_factor == pytest.approx(log["scaling_factor"])
    images = Generator(model, previews=False).generate(
        GenerationRequest("a large red circle on the left, on a yellow background", width=64, height=64,
                          steps=4, seed=0))
    assert len(images) == 1 and images[0].size == (64, 64) and images[0].mode == "RGB"
    for component, name in WEIGHTS.items():
        tensors = load_file(out / train.MODEL_FOLDER / component / name)
        assert {t.dtype for t in tensors.values() if t.is_floating_point()} == {torch.float16}


def test_exported_folder_is_the_diffusers_layout(quick_run):
    from diffusers import SanaPipeline

    _, out = quick_run
    folder = out / train.MODEL_FOLDER
    pipeline = SanaPipeline.from_pretrained(folder)
    for component, name in WEIGHTS.items():
        ours = load_file(folder / component / name)
        theirs = getattr(pipeline, component).state_dict()
        assert set(ours) == set(theirs), component
        for key, tensor in ours.items():
            assert torch.equal(theirs[key].to(tensor.dtype), tensor), (component, key)
    assert pipeline.scheduler.config.flow_shift == train.Plan().flow_shift
    assert pipeline.scheduler.config.use_flow_sigmas and pipeline.scheduler.config.prediction_type == "flow_prediction"
    assert pipeline.tokenizer("a red star").input_ids[0] == 2


def test_stopped_and_resumed_run_equals_an_uninterrupted_one(tmp_path):
    settings = ["--quick", "--device", "cpu", "--eval-captions", "0", "--ae-steps", "2", "--dit-steps", "2"]
    assert train.main([*settings, "--out", str(tmp_path / "whole")]) == 0
    statuses = []
    for _ in range(6):
        statuses.append(train.main([*settings, "--out", str(tmp_path / "parts"), "--stop-after-minutes", "0"]))
        if statuses[-1] == 0:
            break
    assert statuses == [train.RESUME_EXIT, train.RESUME_EXIT, 0]  # stops after AE step 1, DiT step 1
    for component, name in WEIGHTS.items():
        whole = load_file(tmp_path / "whole" / train.MODEL_FOLDER / component / name)
        parts = load_file(tmp_path / "parts" / train.MODEL_FOLDER / component / name)
        assert all(torch.equal(whole[k], parts[k]) for k in whole), component
    with pytest.raises(SystemExit, match="other settings"):
        train.main([*settings[:-1], "3", "--out", str(tmp_path / "parts")])


def test_training_code_does_not_import_diffusers():
    code = (
        "import sys, training.demo.train, training.demo.export, training.demo.evaluate, engine.model; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'diffusers'); "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


def test_packed_model_fits_the_transfer_limits_and_unpacks_identically(quick_run, tmp_path):
    from training.demo.pack import PART_BYTES, pack, unpack

    _, out = quick_run
    written = pack(out, tmp_path / "parts")
    assert len(written) <= 8 and all(p.stat().st_size <= min(PART_BYTES, 16 * 2**20) for p in written)
    folder = unpack(tmp_path / "parts", tmp_path / "resources")
    original = sorted(p.relative_to(out / train.MODEL_FOLDER) for p in (out / train.MODEL_FOLDER).rglob("*"))
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == original
    for name in original:
        if (folder / name).is_file():
            assert (folder / name).read_bytes() == (out / train.MODEL_FOLDER / name).read_bytes()
    part = next((tmp_path / "parts").glob("*.part0"))
    damaged = bytearray(part.read_bytes())
    damaged[-1] ^= 0xFF
    part.write_bytes(bytes(damaged))
    with pytest.raises(SystemExit, match="SHA-256"):
        unpack(tmp_path / "parts", tmp_path / "again")


def test_gemma_starts_with_unit_scale_embeddings_and_learns_at_its_own_rate(tmp_path):
    run = train.Run(train._parse(["--quick", "--device", "cpu", "--out", str(tmp_path)]))
    hidden = run.gemma.config.hidden_size
    embeddings = run.gemma.embed_tokens.weight[1:] * hidden**0.5  # Gemma scales them by √hidden
    assert abs(embeddings.square().mean().sqrt().item() - 1) < 0.1
    assert run.gemma.embed_tokens.weight[0].abs().sum() == 0  # <pad>
    run._update(torch.zeros((), requires_grad=True), run.dit_optimizer, [run.dit, run.gemma], 1e-3, 100)
    gemma = {id(p) for p in run.gemma.parameters()}
    for group in run.dit_optimizer.param_groups:
        expected = run.plan.text_lr_scale if id(group["params"][0]) in gemma else 1.0
        assert group["lr"] == pytest.approx(1e-3 * train.learning_rate_factor(0, run.plan.warmup, 100) * expected)


def test_the_default_plan_is_the_shipped_weights_plan():
    """The README's retrain command (no step counts, no --minutes) trains what ships."""
    shipped = json.loads((resource_path("demo_model") / "training.json").read_text())
    assert shipped["stage"] == "done"
    assert shipped["plan"] == dataclasses.asdict(train.Plan())
