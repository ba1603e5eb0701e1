def pytest_configure(config):
    # Opt-in tests that need minutes (e.g. the real FID network on 2,000
    # images); run them with SPIKEDIFF_SLOW=1.
    config.addinivalue_line("markers", "slow: minutes-long check, skipped unless SPIKEDIFF_SLOW=1")
    config.addinivalue_line("markers", "needs_lava: runs the Python 3.10 Lava env; skipped, "
                            "with the reason, where it is not found")


def _lava_missing() -> str | None:
    """Why the Lava env cannot be used here (None: it can), as the client finds it."""
    from hardware.lava.client import LavaUnavailableError, find_lava_python
    try:
        find_lava_python()
    except LavaUnavailableError as e:
        return ("Lava env not found (" + str(e).splitlines()[0] + "); bash scripts/setup.sh "
                "builds it, or set SPIKEDIFF_LAVA_PY")
    return None


def pytest_collection_modifyitems(config, items):
    lava = [item for item in items if item.get_closest_marker("needs_lava")]
    why = _lava_missing() if lava else None  # looked up only when such a test is collected
    if why:
        for item in lava:
            item.add_marker(pytest.mark.skip(reason=why))


import gzip  # noqa: E402
import struct  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def write_idx_images(path, images: np.ndarray) -> None:
    """IDX3 (uint8, N x H x W), gzip-compressed when the name ends in .gz."""
    raw = struct.pack(">HBBIII", 0, 0x08, 3, *images.shape) + images.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if str(path).endswith(".gz") else raw)


def write_idx_labels(path, labels: np.ndarray) -> None:
    raw = struct.pack(">HBBI", 0, 0x08, 1, len(labels)) + labels.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if str(path).endswith(".gz") else raw)


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory):
    """A data root with a 96/32-image MNIST look-alike: blobs at random places."""
    root = tmp_path_factory.mktemp("data")
    d = root / "mnist"
    d.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:28, :28]
    for split, n in [("train", 96), ("t10k", 32)]:
        cy, cx = rng.uniform(8, 20, (2, n, 1, 1))
        imgs = (255 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 18)).astype(np.uint8)
        write_idx_images(d / f"{split}-images-idx3-ubyte.gz", imgs)
        write_idx_labels(d / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    return root
