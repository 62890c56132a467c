"""Unsigned LEB128 varints, as protobuf and the position payloads write integers."""

from __future__ import annotations


def varint(value: int) -> bytes:
    """The LEB128 bytes of `value`, an unsigned 64-bit integer."""
    if not 0 <= value < 1 << 64:  # a negative value would never terminate the loop
        raise ValueError(f"varint value must be in [0, 2**64), got {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
