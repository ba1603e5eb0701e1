"""Progress bars, shown only on a terminal: a log file or CI output gets no
carriage-return lines. Every command's --no-progress turns them off there too."""
from __future__ import annotations

from tqdm import tqdm


def bar(iterable=None, *, show: bool = True, **kwargs) -> tqdm:
    """tqdm(iterable, **kwargs); show=False: none. tqdm's disable=None means
    "off unless stderr is a terminal"."""
    return tqdm(iterable, disable=None if show else True, **kwargs)
