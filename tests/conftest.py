from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from reference_weights import reference_state_dict

FIXTURES = Path(__file__).parent / "fixtures"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# The reference outputs were produced with 2 threads; results are bit-stable
# for a fixed thread count, so pin it.
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def reference() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "public-v1.npz") as npz:
        return {name: npz[name] for name in npz.files}


@pytest.fixture(scope="session")
def reference_meta() -> dict:
    return json.loads((FIXTURES / "public-v1.json").read_text())


@pytest.fixture(scope="session")
def manifest() -> dict:
    return json.loads((FIXTURES / "manifest.json").read_text())


@pytest.fixture(scope="session")
def reference_model():
    """The full-size AudioCLIP with the reference's deterministic weights, eval mode."""
    from audioclip import AudioCLIP

    model = AudioCLIP().eval()
    model.load_state_dict(reference_state_dict(model, "public-v1"))
    return model


@pytest.fixture(scope="session")
def tiny_model():
    from audioclip import AudioCLIP

    torch.manual_seed(0)
    return AudioCLIP("AudioCLIP-tiny").eval()
