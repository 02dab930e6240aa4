"""Read character vectors out of an R lazy-load database (Rdata.rdx + Rdata.rdb), without R.

Why: the Jane Austen novels ship as r-cran-janeaustenr, whose texts live in R's serialization format. Only the subset
of the XDR format that data packages of plain vectors use is supported; anything else raises DataError.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from pathlib import Path
from typing import Any

from nexus_eval.errors import DataError

_NIL, _REF, _SYM, _LIST, _CHAR, _LGL, _INT, _REAL, _STR, _VEC = 254, 255, 1, 2, 9, 10, 13, 14, 16, 19
_SPECIALS = {242, 241, 253, 252, 251, 250}  # empty/base/global env, unbound, missing arg, base namespace
_HAS_ATTR, _HAS_TAG = 1 << 9, 1 << 10


class _XdrReader:
    """Unserializes one R object (format version 2 or 3, XDR) into Python lists/str/None."""

    def __init__(self, data: bytes, origin: str) -> None:
        self.data, self.pos, self.origin, self.refs = data, 0, origin, []

    def _int(self) -> int:
        (value,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return value

    def _length(self) -> int:
        length = self._int()
        if length == -1:  # long vector: two 32-bit halves
            length = (self._int() << 32) + self._int()
        return length

    def read(self) -> Any:
        if self.data[:2] != b"X\n":
            raise DataError(f"{self.origin}: not an XDR R serialization")
        self.pos = 2
        version = self._int()
        self._int(), self._int()  # writer and minimal reader versions
        if version == 3:
            encoding_length = self._int()
            self.pos += encoding_length  # native encoding name
        return self._item()

    def _item(self) -> Any:
        flags = self._int()
        kind = flags & 0xFF
        if kind == _NIL or kind in _SPECIALS:
            return None
        if kind == _REF:
            index = flags >> 8 or self._int()
            return self.refs[index - 1]
        if kind == _SYM:
            name = self._item()
            self.refs.append(name)
            return name
        if kind == _LIST:
            attributes = self._item() if flags & _HAS_ATTR else None
            tag = self._item() if flags & _HAS_TAG else None
            del attributes
            head = self._item()
            tail = self._item()
            return [(tag, head)] + (tail or [])
        if kind == _CHAR:
            length = self._int()
            if length == -1:
                return None
            text = self.data[self.pos : self.pos + length].decode("utf-8", errors="replace")
            self.pos += length
            return text
        if kind in (_LGL, _INT):
            n = self._length()
            values = list(struct.unpack_from(f">{n}i", self.data, self.pos))
            self.pos += 4 * n
        elif kind == _REAL:
            n = self._length()
            values = list(struct.unpack_from(f">{n}d", self.data, self.pos))
            self.pos += 8 * n
        elif kind in (_STR, _VEC):
            values = [self._item() for _ in range(self._length())]
        else:
            raise DataError(f"{self.origin}: unsupported R object type {kind} at byte {self.pos}")
        if flags & _HAS_ATTR:
            attributes = dict(self._item() or [])
            if isinstance(attributes.get("names"), list):
                return dict(zip(attributes["names"], values, strict=True))
        return values


def read_lazyload_vectors(rdx_path: Path) -> dict[str, Any]:
    """All objects of an R lazy-load database (given its .rdx; the .rdb sits beside it), by name."""
    rdb_path = rdx_path.with_suffix(".rdb")
    for path in (rdx_path, rdb_path):
        if not path.is_file():
            raise DataError(f"{path} missing")
    index = _XdrReader(gzip.decompress(rdx_path.read_bytes()), str(rdx_path)).read()
    if not isinstance(index, dict) or not isinstance(index.get("variables"), dict):
        raise DataError(f"{rdx_path}: not an R lazy-load index")
    compression = (index.get("compressed") or [1])[0]
    blob = rdb_path.read_bytes()
    objects = {}
    for name, (offset, length) in index["variables"].items():
        block = blob[offset + 4 : offset + length]  # 4-byte uncompressed size, then the compressed stream
        objects[name] = _XdrReader(_decompress(block, compression, rdb_path), f"{rdb_path}:{name}").read()
    return objects


def _decompress(block: bytes, compression: int, rdb_path: Path) -> bytes:
    if compression in (1, True):
        return zlib.decompress(block)
    kind, payload = block[:1], block[1:]  # R >= 2.10 with compress=2/3 prefixes the method
    if kind == b"Z":
        return lzma.decompress(payload)
    if kind == b"2":
        return bz2.decompress(payload)
    if kind == b"1":
        return zlib.decompress(payload)
    if kind == b"0":
        return payload
    raise DataError(f"{rdb_path}: unknown R compression {kind!r}")
