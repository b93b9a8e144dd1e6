"""The benchmarks still run and print their figures (tiny settings: what they measure is not checked here)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def run_benchmark(script: str, *args: str, timeout: int = 600) -> list[dict]:
    """The benchmark's printed JSON lines (its header first)."""
    out = subprocess.run([sys.executable, str(BENCHMARKS / script), *args],
                         capture_output=True, text=True, timeout=timeout, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_throughput_prints_pipeline_and_raw_rates_in_both_precisions():
    header, *lines = run_benchmark("throughput.py", "--archs", "small_cnn:imagenet", "--images", "128", "--raw-steps", "1",
                                   "--precisions", "fp32,bf16")
    assert header["images"] == 128
    assert [(l["stage"], l["precision"]) for l in lines] == [("pretrain", "fp32"), ("pretrain", "bf16"),
                                                             ("steal", "fp32"), ("steal", "bf16")]
    for line in lines:
        assert line["raw_images_per_s"] > 0 and line["pipeline_images_per_s"] > 0
        ratio = line["pipeline_images_per_s"] / line["raw_images_per_s"]
        assert line["pipeline_over_raw"] == pytest.approx(ratio, abs=0.01)  # from the unrounded rates
    assert all("bf16_over_fp32" in l for l in lines if l["precision"] == "bf16")


def test_throughput_refuses_an_unknown_precision():
    done = subprocess.run([sys.executable, str(BENCHMARKS / "throughput.py"), "--precisions", "fp16"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--precisions takes fp32 and/or bf16" in done.stderr


def test_throughput_repeats_alternate_and_report_medians():
    header, *lines = run_benchmark("throughput.py", "--archs", "small_cnn:imagenet", "--images", "64", "--raw-steps", "1",
                                   "--repeats", "2", "--malloc-defaults")
    assert header["freed_memory_kept"] is False
    assert [(l["stage"], l["repeats"]) for l in lines] == [("pretrain", 2), ("steal", 2)]
    assert all(l["pipeline_over_raw"] > 0 for l in lines)


def test_augmentation_benchmark_compares_every_op_with_kornia():
    _, *lines = run_benchmark("augmentation.py", "--batch", "8", "--rounds", "1", "--calls", "1", timeout=300)
    assert [l["op"] for l in lines] == ["random_resized_crop", "horizontal_flip", "color_jitter", "grayscale", "all four"]
    assert all(l["encsteal_ms"] > 0 and l["kornia_ms"] > 0 and l["kornia_over_encsteal"] > 0 for l in lines)


def test_request_bounds_measures_every_kind_of_request():
    header, *rows, worst = run_benchmark("request_bounds.py", "--arch", "small_cnn", "--threads", "1", "--repeats", "1",
                                         "--max-batch", "8", "--max-image-pixels", "65536", "--max-request-pixels", "131072")
    assert header["max_batch"] == 8 and header["max_request_pixels"] == 131072
    statuses = {row["request"]: row["status"] for row in rows}
    assert statuses.pop("refused-pixels") == [413] and statuses.pop("refused-quota") == [402]
    assert set(statuses) == {"png-largest", "jpeg-largest", "png-batch", "npy-uint8", "npy-float32", "npy-input-size"}
    assert all(status == [200] for status in statuses.values())
    assert worst["worst_seconds"] > 0 and worst["worst_peak_request"] in statuses
