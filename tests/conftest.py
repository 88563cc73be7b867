"""Fixtures shared by several test files; plain helpers are in ``helpers.py`` and ``training.py``."""

import warnings
from pathlib import Path

import pytest
import torch

from helpers import SYNTHETIC_SIZE
from kldet.data.synthetic import generate


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A synthetic AI-TOD-layout set of 6 images of ``SYNTHETIC_SIZE`` px (seed 3): 4 train, 2 val.

    Shared by the whole session: tests read it and write anything they change elsewhere.
    """
    root = tmp_path_factory.mktemp("synthetic")
    generate(root, 6, seed=3, image_size=SYNTHETIC_SIZE, val_fraction=0.34)
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """``paths.data_dir`` of a test file's tiny kldet-train runs (the synthetic set is written there once)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def quiet_single_thread():
    """One intra-op thread and no expected training warnings, for the tiny runs of ``training.py``.

    Request it with ``pytestmark = pytest.mark.usefixtures("quiet_single_thread")``.
    """
    # These models are tiny, and two threads spin against each other on a busy CPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*(random weights|does not have many workers|too few|Total length).*"
        )
        yield
    torch.set_num_threads(threads)
