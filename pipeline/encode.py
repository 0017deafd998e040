"""tf.train.Example bytes written straight in protobuf's wire format, for the job's hot loop.

    encoder = ExampleEncoder()
    encoder.encode({"query": "跑步鞋", "rt_item_id": ["i7", "i3"], "ts": 1709900000})

The same message as `features.spec.to_example` (names checked against `features.spec`,
sequences truncated to their length), built without protobuf objects: a search's example
holds about 1,300 strings, mostly ids and categories that recur across searches, so each
string's encoded field is memoised and a feature is one `bytes.join`. Building it through
protobuf's `extend` was half of the job's time.

Wire format: Example{features(1): Features{feature(1): map entry{key(1), value(2):
Feature{bytes_list(1) | float_list(2) | int64_list(3): {value(1)}}}}}; numbers are packed.
"""
from __future__ import annotations

import struct
from typing import Mapping

from features.spec import FEATURES

# Memoised encodings per worker; cleared when full so 10^8 distinct ids cannot exhaust memory.
CACHE_STRINGS = 1 << 20


def _varint_slow(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64 two's complement, as protobuf writes it
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Varints of 0 .. 2^14 - 1 (every length and small number the job writes), looked up.
_SMALL = [_varint_slow(n) for n in range(1 << 14)]


def _varint(n: int) -> bytes:
    return _SMALL[n] if 0 <= n < 16384 else _varint_slow(n)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag byte, length, payload."""
    n = len(payload)
    return tag + (_SMALL[n] if n < 16384 else _varint_slow(n)) + payload


_T1, _T2, _T3 = b"\x0a", b"\x12", b"\x1a"  # tags of fields 1, 2, 3 (length-delimited)


class ExampleEncoder:
    """Serialised tf.train.Example from a {feature name: value or sequence} mapping."""

    def __init__(self, cache_strings: int = CACHE_STRINGS):
        self.cache_strings = cache_strings
        self._strings: dict = {}
        self._keys = {name: b"\x0a" + _varint(len(name.encode())) + name.encode() for name in FEATURES}

    def _string(self, value) -> bytes:
        """One BytesList value field of a string (or bytes)."""
        data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        if len(self._strings) >= self.cache_strings:
            self._strings.clear()
        field = self._strings[value] = _field(_T1, data)
        return field

    def feature(self, name: str, value) -> bytes:
        """One map entry of Features: the feature's name and its value list."""
        f = FEATURES.get(name)
        if f is None:
            raise KeyError(f"unknown feature {name!r}; features/spec.py defines the names")
        seq = (value if isinstance(value, (list, tuple)) else list(value))[: f.length] if f.length else [value]
        if f.dtype == "string":
            get = self._strings.get
            feature = _field(_T1, b"".join([get(v) or self._string(v) for v in seq]))
        elif f.dtype == "int64":
            values = b"".join([_varint(int(v)) for v in seq])
            feature = _field(_T3, _field(_T1, values) if values else b"")
        else:
            values = struct.pack(f"<{len(seq)}f", *map(float, seq))
            feature = _field(_T2, _field(_T1, values) if values else b"")
        return _field(_T1, self._keys[name] + _field(_T2, feature))

    def encode(self, values: Mapping[str, object]) -> bytes:
        """The serialised Example; concatenating two gives their merge (protobuf's rule)."""
        feature = self.feature
        return _field(_T1, b"".join([feature(name, value) for name, value in values.items()]))
