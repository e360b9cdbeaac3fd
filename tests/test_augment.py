"""Preprocessing fitted on the training split; batched augmentation with per-sample randomness."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cifartui.config import AugmentConfig
from cifartui.engine.train.augment import Augmenter, Preprocessor, cutout, random_affine, random_flip, random_shift


def _images(count: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (count, 3, 32, 32), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_standardize_gives_zero_mean_unit_std_per_channel() -> None:
    images = _images(256)
    out = Preprocessor(("standardize",)).fit(images)(images)
    assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(out.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)


_PEAK_OF_FIT = """
from pathlib import Path
import torch
from cifartui.engine.train.augment import Preprocessor

def field(name):
    return int(Path("/proc/self/status").read_text().split(name + ":")[1].split()[0]) / 1024

images = torch.randint(0, 256, (4000, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
fitted = Preprocessor(("standardize",))
fitted.fit(images[:64])  # torch's first ops start its threads and load kernels: not the fit's own memory
Path("/proc/self/clear_refs").write_text("5")  # restart the high-water mark from the current size
before = field("VmRSS")
fitted.fit(images)
print(field("VmHWM") - before)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="reads Linux's /proc/self/status")
def test_fitting_standardize_makes_no_float_copy_of_the_whole_set() -> None:
    """A whole-set float64 copy and its temporaries were a run's peak memory (3 x 1.2 GB for CIFAR):
    the per-channel statistics are summed a chunk at a time instead, and match the direct computation.
    The peak is read in a process of its own: another test's threads would move this one's high-water mark."""
    images = _images(4000)
    copy_mib = images.numel() * 8 / 2**20  # one float64 copy: 94 MiB
    measured = subprocess.run([sys.executable, "-c", _PEAK_OF_FIT], capture_output=True, text=True, check=True)
    assert float(measured.stdout.split()[-1]) < copy_mib / 2
    fitted = Preprocessor(("standardize",)).fit(images)
    floats = images.double() / 255
    assert torch.allclose(fitted.stats["mean"].double(), floats.mean(dim=(0, 2, 3), keepdim=True), atol=1e-6)
    assert torch.allclose(fitted.stats["std"].double(), floats.std(dim=(0, 2, 3), keepdim=True), atol=1e-6)


def test_gcn_normalizes_each_image() -> None:
    out = Preprocessor(("gcn",)).fit(_images(8))(_images(8))
    assert torch.allclose(out.mean(dim=(1, 2, 3)), torch.zeros(8), atol=1e-5)
    assert torch.allclose(out.std(dim=(1, 2, 3)), torch.ones(8), atol=1e-4)


@pytest.mark.slow
def test_zca_whitens_the_training_split_it_was_fitted_on() -> None:
    # Correlated images (a smooth field plus a little noise) so whitening has work to do.
    g = torch.Generator().manual_seed(1)
    base = torch.rand(4000, 3, 4, 4, generator=g)
    smooth = torch.nn.functional.interpolate(base, size=32, mode="bilinear", align_corners=False)
    images = (smooth * 200 + torch.rand(4000, 3, 32, 32, generator=g) * 40).to(torch.uint8)
    pre = Preprocessor(("zca",), zca_epsilon=1e-5).fit(images)
    flat = pre(images).reshape(len(images), -1).double()
    raw = (images.double() / 255).reshape(len(images), -1)
    def mean_abs_correlation(x: torch.Tensor) -> float:
        c = torch.corrcoef(x[:, :64].T)  # neighbouring pixels of the first rows
        return float((c - torch.diag(torch.diag(c))).abs().mean())
    assert mean_abs_correlation(raw) > 0.3
    assert mean_abs_correlation(flat) < 0.05


def test_random_shift_moves_content_and_fills_zeros() -> None:
    x = torch.ones(200, 1, 32, 32)
    out = random_shift(x, 4, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    zeros_per_image = (out == 0).flatten(1).sum(1)
    assert (zeros_per_image > 0).any() and (zeros_per_image == 0).any()  # some shifted, some not
    assert zeros_per_image.unique().numel() > 5  # offsets differ per image


def test_flip_is_per_sample_and_exact() -> None:
    x = torch.arange(32.0).expand(100, 3, 32, 32).clone()
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = (out[:, 0, 0, 0] == 31)
    assert 20 < int(flipped.sum()) < 80
    assert torch.equal(out[flipped], x[flipped].flip(3)) and torch.equal(out[~flipped], x[~flipped])


def test_cutout_zeroes_a_square_per_image() -> None:
    out = cutout(torch.ones(50, 3, 32, 32), 8, torch.Generator().manual_seed(0))
    zeros = (out[:, 0] == 0).flatten(1).sum(1)
    assert zeros.max() == 64 and zeros.min() >= 16  # a full 8x8 square, or part of it at a border
    assert torch.equal(out[:, 0] == 0, out[:, 2] == 0)  # the same square on every channel


def test_keras_affine_keeps_shape_and_varies_per_sample() -> None:
    x = torch.rand(16, 3, 32, 32)
    out = random_affine(x, 15.0, 0.1, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and not torch.allclose(out, x)
    differences = (out - x).abs().flatten(1).mean(1)
    assert differences.std() > 0


def test_augmenter_is_deterministic_given_the_generator() -> None:
    augment = Augmenter(AugmentConfig(crop_padding=4, flip=True, rotation=10, shift=0.1, cutout=8, translate=2))
    x = torch.rand(32, 3, 32, 32)
    first = augment(x, torch.Generator().manual_seed(5))
    second = augment(x, torch.Generator().manual_seed(5))
    third = augment(x, torch.Generator().manual_seed(6))
    assert torch.equal(first, second) and not torch.equal(first, third)


def test_zca_epsilon_is_added_to_the_eigenvalues() -> None:
    """Whitening with epsilon leaves each principal direction with variance lambda / (lambda + epsilon)."""
    g = torch.Generator().manual_seed(2)
    base = torch.rand(3000, 3, 2, 2, generator=g)
    smooth = torch.nn.functional.interpolate(base, size=4, mode="bilinear", align_corners=False)
    images = (smooth * 200 + torch.rand(3000, 3, 4, 4, generator=g) * 50).to(torch.uint8)
    raw = (images.double() / 255).reshape(len(images), -1)
    eigenvalues = torch.linalg.eigvalsh(torch.cov(raw.T, correction=0))
    for epsilon in (0.1, 0.01):
        pre = Preprocessor(("zca",), zca_epsilon=epsilon).fit(images)
        whitened = pre(images).reshape(len(images), -1).double()
        got = torch.linalg.eigvalsh(torch.cov(whitened.T, correction=0))
        expected = eigenvalues / (eigenvalues + epsilon)
        assert torch.allclose(got, expected, atol=1e-4)


def test_the_elu_recipe_whitens_with_pylearn2s_epsilon() -> None:
    from cifartui import presets

    augment = presets.load("elu18-cifar100").augment
    assert augment.preprocess == ("gcn", "zca") and augment.zca_epsilon == 0.1
    assert Preprocessor(augment.preprocess, augment.zca_epsilon).zca_epsilon == 0.1
