"""Portable adapter files on the caller's side: apply one to a base model file, checking that
the base is the one it names and that the result is the model it promises (bit for bit)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from fused.client.errors import LocalError
from fused.common.codecs.adapter_file import AdapterFile, AdapterFileError, decode_adapter_file
from fused.common.codecs.adapter_file_apply import apply_adapter_file
from fused.common.codecs.tensor_codec import decode_tensors, encode_tensors


@dataclass(frozen=True)
class Applied:
    path: Path
    sha256: str  # the result's; equal to what the adapter file names
    changed: int  # positions written


def read_adapter(path: Path) -> AdapterFile:
    try:
        return decode_adapter_file(path.read_bytes())
    except OSError as exc:
        raise LocalError(f"cannot read {path}: {exc.strerror}") from exc
    except AdapterFileError as exc:
        raise LocalError(f"{path} is not a valid adapter file: {exc}") from exc


def apply_adapter(base: Path, adapter: Path, out: Path) -> Applied:
    """Write base + adapter to `out`. Refuses a base other than the one the adapter names, and
    a result other than the model it names (then nothing is written)."""
    f = read_adapter(adapter)
    try:
        data = base.read_bytes()
    except OSError as exc:
        raise LocalError(f"cannot read {base}: {exc.strerror}") from exc
    found = hashlib.sha256(data).hexdigest()
    if found != f.base_sha256:
        raise LocalError(
            f"{adapter} applies to the base model with sha256 {f.base_sha256}; {base} has "
            f"sha256 {found}"
        )
    try:
        state, meta = decode_tensors(data, max_bytes=len(data))
        merged = apply_adapter_file(state, f)
    except ValueError as exc:  # AdapterFileError, CodecError
        raise LocalError(f"cannot apply {adapter} to {base}: {exc}") from exc
    result = encode_tensors(merged, {"model": f.extra.get("model", meta.get("model", ""))})
    digest = hashlib.sha256(result).hexdigest()
    if digest != f.model_sha256:
        raise LocalError(f"the result has sha256 {digest}, the adapter names {f.model_sha256}")
    try:
        out.write_bytes(result)
    except OSError as exc:
        raise LocalError(f"cannot write {out}: {exc.strerror}") from exc
    return Applied(out, digest, sum(p.positions.numel() for p in f.patches.values()))
