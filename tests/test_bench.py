"""`python benchmarks/bench_pipeline.py --tiny` on the CPU: every stage runs and lands in the JSON report."""

from __future__ import annotations

import json
import sys

import pytest

from benchmarks import bench_pipeline as bench

ROW_KEYS = {"stage", "model", "size", "precision", "impl", "variant", "ms", "peak_gib", "fits_16gib",
            "speedup_vs_diffusers", "psnr_db", "note"}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    code = bench.main(["--tiny", "--device", "cpu", "--sizes", "64", "--steps", "2", "--warmup", "0",
                       "--repeats", "1", "--out", str(out)])
    assert code == 0
    return json.loads(out.read_text())


def test_tiny_bench_writes_every_stage_with_ours_and_diffusers(report):
    assert set(report) == {"meta", "checks", "rows"}
    assert report["meta"]["diffusers"] is not None
    assert all(set(row) == ROW_KEYS for row in report["rows"])
    timed = {(row["stage"], row["impl"]) for row in report["rows"] if row["ms"] is not None}
    for stage in ("dit", "sample", "pipeline"):
        assert (stage, "ours") in timed and (stage, "diffusers") in timed
    assert ("encode", "transformers") in timed
    decode = {(row["impl"], row["variant"]): row for row in report["rows"] if row["stage"] == "decode"}
    assert set(decode) == {("ours", "one pass"), ("ours", "tiled"), ("diffusers", "one pass"), ("diffusers", "tiled")}
    assert all(row["ms"] > 0 for row in decode.values())


def test_tiny_bench_compares_with_diffusers(report):
    rows = {(r["stage"], r["precision"], r["impl"], r["variant"]): r for r in report["rows"]}
    assert rows["dit", "fp32", "ours", ""]["speedup_vs_diffusers"] > 0
    assert rows["sample", "int8", "ours", "2 steps"]["speedup_vs_diffusers"] > 0
    # --tiny decodes in 1-latent-pixel tiles: they give diffusers' one-pass image (fp32: exact up to
    # rounding).
    tiled = rows["decode", "fp32", "ours", "tiled"]
    assert tiled["note"].startswith("tiles of")
    assert tiled["psnr_db"] >= bench.PSNR_GOAL_DB
    assert report["checks"]["tiled_decode_psnr_goal_met"] is True
    assert report["checks"]["tiled_decode_psnr_db"] == {"64": tiled["psnr_db"]}


def test_missing_accelerate_module_is_a_row_not_a_crash(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "engine.accelerate", None)  # makes the import fail
    out = tmp_path / "bench.json"
    bench.main(["--tiny", "--device", "cpu", "--only", "dit", "--sizes", "64", "--precisions", "fp32",
                "--impls", "ours,ours+kernels", "--no-reference", "--repeats", "1", "--out", str(out)])
    rows = {row["impl"]: row for row in json.loads(out.read_text())["rows"]}
    assert rows["ours"]["ms"] is not None
    assert rows["ours+kernels"]["ms"] is None
    assert rows["ours+kernels"]["note"].startswith("not available yet (engine.accelerate.accelerate_dit")


def test_unknown_stage_is_refused():
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--tiny", "--only", "dit,training"])
    assert exit_info.value.code == 2


def test_dit_steps_on_a_gpu_are_timed_from_idle_and_nothing_else_waits(monkeypatch):
    import torch

    def setup(device: str) -> bench.Setup:
        return bench.Setup(torch.device(device), True, False, ("ours",), 2, 0, 3, 15.0, None, settle_seconds=0.75)

    assert bench.settle_before(setup("cuda"), "dit") == 0.75
    assert bench.settle_before(setup("cuda"), "sample") == 0.0
    assert bench.settle_before(setup("cpu"), "dit") == 0.0
    slept = []
    monkeypatch.setattr(bench.time, "sleep", slept.append)
    calls = []
    bench.measure(setup("cpu"), lambda: calls.append(len(slept)), (), settle=0.75)
    assert slept == [0.75] * 3 and calls == [1, 2, 3]  # each timed call right after its pause


def test_negative_settle_is_refused(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--tiny", "--device", "cpu", "--settle-seconds", "-1"])
    assert "--settle-seconds must be 0 or more" in capsys.readouterr().err
