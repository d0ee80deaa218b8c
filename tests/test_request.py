import pytest

from engine.errors import RequestError
from engine.request import GenerationRequest


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("width", 1000, "multiple of 32"),
        ("height", 4128, "outside"),
        ("width", 0, "outside"),
        ("width", 512.0, "outside"),
        ("steps", 0, "outside 1.."),
        ("guidance_scale", -0.5, "outside 0.."),
        ("num_images", 0, "outside"),
        ("seed", -1, "outside"),
        ("solver", "heun", "not one of dpm, euler"),
        ("precision", "int4", "not one of"),
        ("prompt", None, "must be text"),
    ],
)
def test_request_rejects_each_bad_field_by_name(field, value, words):
    with pytest.raises(RequestError) as caught:
        GenerationRequest(**{"prompt": "x", field: value})
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}:")
    assert words in str(caught.value)


def test_request_seed_is_fixed_once_and_kept():
    request = GenerationRequest("a cat").with_seed()
    assert isinstance(request.seed, int)
    assert request.with_seed() is request
    assert GenerationRequest("a cat", seed=7).with_seed().seed == 7


def test_request_round_trips_through_a_dict_and_rejects_unknown_fields():
    request = GenerationRequest("a cat", negative_prompt="dog", width=512, height=768, seed=3, solver="euler")
    assert GenerationRequest.from_dict(request.to_dict()) == request
    with pytest.raises(RequestError, match="colour"):
        GenerationRequest.from_dict({"prompt": "x", "colour": "red"})


def test_guidance_of_one_or_less_runs_without_the_unconditional_pass():
    assert GenerationRequest("x", guidance_scale=4.5).uses_guidance
    assert not GenerationRequest("x", guidance_scale=1.0).uses_guidance
