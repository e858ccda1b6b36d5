"""The deterministic weight rule of the reference vectors (see tests/fixtures/README.md).

Every state-dict entry gets values from its own generator, seeded from the
salt and the key, so any implementation with the original's keys can be
given exactly the weights the reference outputs were computed with.
"""

from __future__ import annotations

import math
import zlib

import torch


def reference_value(key: str, tensor: torch.Tensor, salt: str) -> torch.Tensor:
    shape = tuple(tensor.shape)
    g = torch.Generator().manual_seed(zlib.crc32((salt + key).encode("utf-8")))
    f32 = dict(generator=g, dtype=torch.float32)
    last = key.rsplit(".", 1)[-1]
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    if key.endswith("running_var"):
        return 0.5 + torch.rand(shape, **f32)
    if key.endswith("running_mean"):
        return 0.1 * torch.randn(shape, **f32)
    if len(shape) == 0:
        value = math.log(1 / 0.07) if last == "logit_scale" else math.log(100.0)
        return torch.tensor(value, dtype=torch.float32)
    if last == "window":
        return tensor.clone()
    if key.endswith(("fbsp.m", "fbsp.fb")):
        return 1.0 + 0.1 * torch.randn(shape, **f32)
    if key.endswith("fbsp.fc"):
        return torch.arange(shape[0], dtype=torch.float32) + 0.1 * torch.randn(shape, **f32)
    if len(shape) == 1 and key.endswith(".weight"):
        return 1.0 + 0.1 * torch.randn(shape, **f32)
    if len(shape) == 1:
        return 0.1 * torch.randn(shape, **f32)
    return torch.randn(shape, **f32) / math.sqrt(tensor.numel() / shape[0])


def reference_state_dict(model: torch.nn.Module, salt: str) -> dict[str, torch.Tensor]:
    return {key: reference_value(key, t, salt) for key, t in model.state_dict().items()}
