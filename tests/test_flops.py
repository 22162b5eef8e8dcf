"""The machine's matmul peak (the MFU's denominator) is measured by a machine's first run and read by later ones."""

import json

import torch

from trustregion.models.flops import matmul_peak

measure = matmul_peak.__wrapped__  # without the per-process cache: what a new process does


def test_the_first_run_measures_the_peak_and_a_later_run_reads_it_back(tmp_path):
    store = tmp_path / "matmul_peak.json"
    first = measure("cpu", torch.float32, store)
    assert first > 0 and list(json.loads(store.read_text()).values()) == [first]
    assert measure("cpu", torch.float32, store) == first  # a second probe would not repeat the float exactly


def test_each_dtype_has_its_own_peak(tmp_path):
    store = tmp_path / "matmul_peak.json"
    measure("cpu", torch.float32, store)
    measure("cpu", torch.float64, store)
    assert sorted(key.split(" | ")[2] for key in json.loads(store.read_text())) == ["torch.float32", "torch.float64"]


def test_a_corrupt_store_is_measured_again_and_rewritten(tmp_path):
    store = tmp_path / "matmul_peak.json"
    store.write_text("{not json")
    peak = measure("cpu", torch.float32, store)
    assert list(json.loads(store.read_text()).values()) == [peak]


def test_a_store_that_cannot_be_written_still_gives_the_measured_peak(tmp_path):
    (tmp_path / "a-file").write_text("")
    store = tmp_path / "a-file" / "matmul_peak.json"  # its parent is a file: mkdir fails
    assert measure("cpu", torch.float32, store) > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
