"""The Generator's contract: events in order, previews every step, cancel between steps, cached prompts."""

import threading

import pytest

from engine import events
from engine.generator import Generator
from engine.model import load_model
from engine.request import GenerationRequest


@pytest.fixture(scope="module")
def generator(tiny_model_dir):
    return Generator(load_model(tiny_model_dir, device="cpu"))


def test_events_arrive_in_order_with_a_preview_every_step(generator):
    seen = []
    images = generator.generate(GenerationRequest("a blue square", width=64, height=96, steps=4), on_event=seen.append)
    kinds = [type(event).__name__ for event in seen]
    assert kinds == ["Started"] + ["Step"] * 4 + ["Decoding", "Finished"]
    assert seen[0].request.seed is not None, "the seed is fixed before the run so it can be saved"
    steps = seen[1:5]
    assert [s.index for s in steps] == [1, 2, 3, 4] and all(s.total == 4 for s in steps)
    assert all(s.preview.size == (64 // 32, 96 // 32) for s in steps)  # one pixel per latent pixel
    assert [s.elapsed for s in steps] == sorted(s.elapsed for s in steps)
    assert seen[-1].images == images and seen[-1].metadata["request"]["seed"] == seen[0].request.seed


def test_a_first_step_that_readies_the_gpu_is_announced_before_it_runs(generator, monkeypatch):
    """On a GPU the first step at a size captures a CUDA graph, and Triton compiles and tunes its
    kernels for it: seconds where a step takes milliseconds. The runner knows (`prepares`), and
    the Generator says so before that step; the CPU runner never prepares (no events above)."""
    asked = []

    def prepares(latents):
        asked.append(tuple(latents.shape))
        return True

    monkeypatch.setattr(generator._runner, "prepares", prepares)
    seen = []
    generator.generate(GenerationRequest("a blue square", width=64, height=96, steps=3), on_event=seen.append)
    kinds = [type(event).__name__ for event in seen]
    assert kinds == ["Started", "Preparing"] + ["Step"] * 3 + ["Decoding", "Finished"]
    channels = generator.model.dit_config.in_channels
    assert asked == [(1, channels, 96 // 32, 64 // 32)]  # once, for the latents the steps start from
    assert 0 <= seen[1].elapsed <= seen[2].elapsed


def test_cancel_stops_between_steps_and_returns_nothing(generator):
    cancel, seen = threading.Event(), []

    def on_event(event):
        seen.append(event)
        if isinstance(event, events.Step) and event.index == 2:
            cancel.set()

    images = generator.generate(GenerationRequest("a cat", width=64, height=64, steps=6), on_event, cancel)
    assert images == []
    assert [type(e).__name__ for e in seen] == ["Started", "Step", "Step", "Cancelled"]
    assert seen[-1].completed_steps == 2


def test_a_new_seed_reuses_the_cached_prompt_embeddings(generator, monkeypatch):
    request = GenerationRequest("a green star on a white background", width=64, height=64, steps=1, seed=1)
    generator.generate(request)
    calls = []
    encoder = generator.model.text_encoder
    original = encoder.encode
    monkeypatch.setattr(encoder, "encode", lambda *a, **k: calls.append(a) or original(*a, **k))
    generator.generate(request.replace(seed=2))
    assert calls == []
    generator.generate(request.replace(prompt="something else"))
    assert len(calls) == 1


def test_the_dit_reads_the_prompts_without_the_padding_past_them(generator, monkeypatch):
    from engine.text_encoder import TRIM_MULTIPLE

    lengths = []
    original = generator._runner.velocity
    monkeypatch.setattr(generator._runner, "velocity",
                        lambda latents, t, text, mask, *a: lengths.append(text.shape[1]) or original(latents, t, text, mask, *a))
    generator.generate(GenerationRequest("a blue square", width=64, height=64, steps=2, guidance_scale=4.5))
    assert generator.model.text_encoder.max_length == 300
    assert lengths == [TRIM_MULTIPLE] * 2


def test_an_engine_error_is_reported_then_raised(generator, monkeypatch):
    seen = []
    monkeypatch.setattr(generator, "decode", lambda latents: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        generator.generate(GenerationRequest("x", width=64, height=64, steps=1), on_event=seen.append)
    assert isinstance(seen[-1], events.Failed) and str(seen[-1].error) == "boom"


def test_offloading_parks_the_text_encoder_once_the_prompts_are_encoded(tiny_model_dir, monkeypatch):
    generator = Generator(load_model(tiny_model_dir, device="cpu"), previews=False, offload_text_encoder=True)
    encoder = generator.model.text_encoder
    order = []
    original_encode = encoder.encode
    monkeypatch.setattr(encoder, "encode", lambda *a, **k: order.append("encode") or original_encode(*a, **k))
    monkeypatch.setattr(encoder, "park", lambda: order.append("park"))
    request = GenerationRequest("a blue square", width=64, height=64, steps=2, seed=3)
    first = generator.generate(request)
    assert order == ["encode", "encode", "park"]  # prompt and negative, then parked before the DiT
    generator.offload_text_encoder = False
    assert list(generator.generate(request)[0].getdata()) == list(first[0].getdata())
    assert order == ["encode", "encode", "park"]  # cached prompts: no encode, nothing to park


def test_full_previews_decode_every_kth_step_and_the_last(generator):
    generator.full_preview_every = 2
    try:
        seen = []
        images = generator.generate(GenerationRequest("a blue square", width=64, height=96, steps=5, seed=2),
                                    on_event=seen.append)
    finally:
        generator.full_preview_every = 0
    sizes = [event.preview.size for event in seen if isinstance(event, events.Step)]
    latent, full = (64 // 32, 96 // 32), (64, 96)
    assert sizes == [latent, full, latent, full, latent]  # steps 2 and 4; the last one's image is the result
    assert images[0].size == full
