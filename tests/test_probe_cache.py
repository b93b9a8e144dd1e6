"""The probe cache: the same encoder, data, probe and seed give the stored accuracy without training again;
anything else that could change the accuracy is a miss."""

import torch

import encsteal.evaluate as evaluate_module
from encsteal.config import ProbeConfig
from encsteal.evaluate import ProbeCache, evaluate_task


def encoder(scale: float):
    return lambda images: images.float().flatten(1)[:, :8] * scale


def task_data():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 4, 4), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 2, (40,), generator=generator)
    return images[:24], labels[:24], images[24:], labels[24:]


def run_task(cache, probe, identities, data=None):
    encoders = {"target": encoder(1.0), "stolen": encoder(0.5), "random-0": encoder(2.0)}
    return evaluate_task(encoders, *(data or task_data()), 2, probe, batch_size=8, seed=0, device=torch.device("cpu"),
                         task="t", progress=False, identities=identities, probe_cache=cache)


def test_a_second_evaluation_reuses_every_known_probe(tmp_path, monkeypatch):
    trained = []
    real = evaluate_module.probe_accuracy
    monkeypatch.setattr(evaluate_module, "probe_accuracy", lambda *a, **k: trained.append(1) or real(*a, **k))
    cache, probe = ProbeCache(tmp_path / "probes.sqlite"), ProbeConfig(hidden=[8], epochs=2, lr=1e-2)
    identities = {"target": "target:abc", "random-0": "random:small_cnn:0"}
    first = run_task(cache, probe, identities)
    assert len(trained) == 3
    second = run_task(cache, probe, identities)
    assert len(trained) == 4  # only the stolen encoder's probe was trained again
    assert (second["TA"], second["R"]) == (first["TA"], first["R"]) and second["fidelity"] == first["fidelity"]
    run_task(cache, probe.model_copy(update={"epochs": 3}), identities)  # another probe: no reuse
    assert len(trained) == 7
    images, labels, test_images, test_labels = task_data()
    run_task(cache, probe, identities, (images, 1 - labels, test_images, test_labels))  # other labels: no reuse
    assert len(trained) == 10
    run_task(cache, probe, {"target": "target:other-weights"})  # another target, no identity for R: both trained
    assert len(trained) == 13
