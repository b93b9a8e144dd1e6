"""Each obfuscation is what it claims, and is an ordinary checkpoint that loads and serves."""

import pytest
import torch
from torch import nn

from encsteal.checkpoint import load_encoder, save_encoder
from encsteal.models import build_encoder
from encsteal.ownership.obfuscations import OBFUSCATIONS, ObfuscationConfig, obfuscate, obfuscate_checkpoint

X = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(params=[None, 64], ids=["no-final-layer", "final-layer"])
def copy(request):
    torch.manual_seed(0)
    return build_encoder("small_cnn", "imagenet", out_dim=request.param).eval()


def features(encoder, x=X):
    with torch.inference_mode():
        return encoder.eval()(x).double()


def test_shuffle_is_a_permutation(copy):
    shuffled = obfuscate(copy, ObfuscationConfig(kind="shuffle", seed=1))
    out, bare = features(shuffled), features(copy)
    # each image's values are the same multiset, in another order
    assert torch.allclose(out.sort(1).values, bare.sort(1).values, atol=1e-5) and not torch.allclose(out, bare)
    if copy.out_dim is None:  # the added final layer is a permutation matrix
        weight = shuffled.projection.weight
        assert set(weight.unique().tolist()) == {0.0, 1.0}
        assert (weight.sum(0) == 1).all() and (weight.sum(1) == 1).all()


def test_pad_adds_constant_dimensions_and_keeps_the_others_in_order(copy):
    config = ObfuscationConfig(kind="pad", pad=10, seed=2)
    out, bare = features(obfuscate(copy, config)), features(copy)
    assert out.shape[1] == bare.shape[1] + 10
    constant = out.std(0) < 1e-9
    assert int(constant.sum()) >= 10 and out[:, constant].abs().max() > 0
    varying = out[:, ~constant]
    assert torch.allclose(varying, bare[:, bare.std(0) >= 1e-9], atol=1e-5)


def test_linear_is_an_invertible_map(copy):
    transformed = obfuscate(copy, ObfuscationConfig(kind="linear", seed=3))
    out, bare = features(transformed), features(copy)
    # the map T folded into the final layer: W' = T W (W the copy's final layer, or the identity without one)
    old = copy.projection.weight.detach().double() if copy.out_dim else torch.eye(copy.feature_dim, dtype=torch.float64)
    transform = transformed.projection.weight.detach().double() @ torch.linalg.pinv(old)
    singular = torch.linalg.svdvals(transform)
    assert singular.min() >= 0.5 - 1e-4 and singular.max() <= 2 + 1e-4  # invertible, condition at most 4
    assert torch.allclose(bare @ transform.T, out, atol=1e-4) and not torch.allclose(out, bare, atol=1e-2)


def test_prune_zeroes_the_smallest_weights(copy):
    pruned = obfuscate(copy, ObfuscationConfig(kind="prune", prune=0.5))
    weights = [m.weight.detach() for m in pruned.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    before = [m.weight.detach() for m in copy.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    zero = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert 0.49 < zero < 0.51 and all((b != 0).all() for b in before)  # the original is left alone
    largest_zeroed = max(float(b[w == 0].abs().max()) for b, w in zip(before, weights) if (w == 0).any())
    smallest_kept = min(float(w[w != 0].abs().min()) for w in weights)
    assert largest_zeroed <= smallest_kept
    assert not torch.allclose(features(pruned), features(copy))


def test_finetune_moves_the_copy_and_needs_its_surrogate(copy):
    surrogate = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    config = ObfuscationConfig(kind="finetune", finetune_epochs=1, finetune_batch_size=32)
    tuned = obfuscate(copy, config, surrogate)
    assert tuned.feature_dim == copy.feature_dim and not torch.allclose(features(tuned), features(copy))
    with pytest.raises(Exception, match="surrogate"):
        obfuscate(copy, config, None)


@pytest.mark.parametrize("kind", sorted(OBFUSCATIONS))
def test_every_obfuscation_is_an_ordinary_checkpoint(kind, tmp_path):
    torch.manual_seed(0)
    stolen = save_encoder(build_encoder("small_cnn", "imagenet"), tmp_path / "stolen.safetensors",
                          {"role": "stolen", "image_size": 32,
                           "surrogate": {"dataset": "digits", "split": "train", "indices": list(range(48))}})
    config = ObfuscationConfig(kind=kind, finetune_epochs=1, finetune_batch_size=16)
    out = obfuscate_checkpoint(stolen, config, tmp_path / f"{kind}.safetensors", root=tmp_path)
    encoder, meta = load_encoder(out)
    assert meta["obfuscation"] == kind and encoder(X).shape[0] == len(X)
    mtime = out.stat().st_mtime_ns
    assert obfuscate_checkpoint(stolen, config, out, root=tmp_path) == out and out.stat().st_mtime_ns == mtime  # reused
