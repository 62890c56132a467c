"""A test-only writer of the retired "fused-adapter-v2" payloads, as the code before
fused-adapter-v3 wrote them (`git show 9b26d9d^:common/codecs/adapter_codec.py`): the decoder
must keep reading what coordinators stored then; nothing in the product writes v2 any more."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import zstandard

from fused.common.codecs.adapter_codec import VALUE_DTYPES
from fused.common.codecs.tensor_codec import encode_tensors
from fused.common.ml.adapters import AdapterLayout

FORMAT_V2 = "fused-adapter-v2"


def v2_metadata(layout: AdapterLayout) -> dict[str, str]:
    return {"format": FORMAT_V2, "mask_digest": layout.digest}


def frame(raw: bytes, level: int = 3) -> bytes:
    """One zstd frame declaring its content size, as v2 wrapped its safetensors file."""
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(raw)


def v2_content(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None) -> bytes:
    """The safetensors file inside a v2 frame; tests pass hostile tensors or metadata."""
    return encode_tensors(tensors, metadata)


def encode_v2(
    layout: AdapterLayout, values: Mapping[str, torch.Tensor], dtype: str = "float32"
) -> bytes:
    """What the v2 encoder made of ``values``: every masked position's value, in ``dtype``."""
    tensors = {n: values[n].detach().to(VALUE_DTYPES[dtype]) for n in layout.names}
    return frame(v2_content(tensors, v2_metadata(layout)))
