"""The demo's data: scikit-learn's digits or torchvision's FashionMNIST, as normalised 28x28 tensors.

Both end up as a :class:`DemoData`, so every loop and plugin sees the same shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch.utils.data import DataLoader, TensorDataset

from tbhooks.demo.errors import DemoError, one_line

TEST_FRACTION = 0.2
"""The share of the digits held out for testing (fixed by ``--seed``)."""
MEAN, STD = 0.5, 0.5
"""Inputs are scaled to [0, 1], then normalised as ``(x - MEAN) / STD``, as in the tutorial."""
DIGIT_CLASSES = [str(digit) for digit in range(10)]
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FASHION_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
"""The uncompressed IDX files torchvision's FashionMNIST reads from ``<root>/FashionMNIST/raw``."""


@dataclass
class DemoData:
    """A train and a test split of normalised ``[N, 1, 28, 28]`` images with labels."""

    name: str
    train: TensorDataset
    test: TensorDataset
    class_names: list[str]

    def limited(self, limit: int | None) -> DemoData:
        """The first ``limit`` samples of each split (all of them for ``None``), for quick checks."""
        if limit is None:
            return self

        def head(dataset: TensorDataset) -> TensorDataset:
            return TensorDataset(*(tensor[:limit] for tensor in dataset.tensors))

        return DemoData(self.name, head(self.train), head(self.test), self.class_names)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """Images in ``[0, 1]`` to the network's input scale, ``(x - MEAN) / STD``."""
    return (images - MEAN) / STD


def load_digits(seed: int = 0, test_fraction: float = TEST_FRACTION) -> DemoData:
    """scikit-learn's 1797 handwritten digits, resized from 8x8 to 28x28 (bilinear) and normalised.

    A random ``test_fraction`` of the images, drawn with ``seed``, is held out.
    Raises :class:`DemoError` when scikit-learn is missing.
    """
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise DemoError(
            "the digits data set needs scikit-learn: pip install 'tbhooks[demo]' (or use --dataset fashion-mnist)"
        ) from None
    bunch = sklearn_digits()
    small = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = normalise(F.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False))
    labels = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    held_out = round(len(labels) * test_fraction)
    test, train = order[:held_out], order[held_out:]
    return DemoData(
        "digits",
        TensorDataset(images[train], labels[train]),
        TensorDataset(images[test], labels[test]),
        list(DIGIT_CLASSES),
    )


def load_fashion_mnist(data_dir: str | Path, download: bool = False) -> DemoData:
    """torchvision's FashionMNIST (60000 training and 10000 test images) from ``<data_dir>/FashionMNIST/raw``.

    ``download=True`` fetches the files first; missing or unreadable files raise :class:`DemoError`.
    """
    from torchvision.datasets import FashionMNIST

    raw = Path(data_dir) / "FashionMNIST" / "raw"
    missing = [name for name in FASHION_FILES if not (raw / name).is_file()]
    if missing and not download:
        raise DemoError(
            f"FashionMNIST not found in {raw} (missing {', '.join(missing)}); pass --download to fetch it, "
            f"or --data-dir DIR where DIR/FashionMNIST/raw holds the files"
        )
    splits = []
    for train in (True, False):
        try:
            dataset = FashionMNIST(root=str(data_dir), train=train, download=download and train)
        except Exception as exc:  # a failed download or an unreadable file: torchvision raises many kinds
            what = "downloaded to" if download and missing else "read from"
            raise DemoError(
                f"FashionMNIST could not be {what} {raw}: {one_line(exc)} (check --data-dir and --download)"
            ) from None
        images = normalise(dataset.data.unsqueeze(1).float() / 255.0)
        splits.append(TensorDataset(images, dataset.targets.long()))
    return DemoData("fashion-mnist", splits[0], splits[1], list(FASHION_CLASSES))


def make_loaders(data: DemoData, batch_size: int, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """A shuffled training loader (its own generator, seeded) and an ordered test loader."""
    train = DataLoader(data.train, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    test = DataLoader(data.test, batch_size=max(batch_size, 256), shuffle=False)
    return train, test
