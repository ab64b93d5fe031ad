"""A PNG's text, read from its chunks without decoding a pixel.

    read_text(file, keyword, max_bytes) -> PngText     `keyword`'s text and the eXIf data, or None
    without_extras(file) -> file object | None           the same PNG with its compressed extras left out

Pillow answers `Image.open(f).info` from the chunks before the image data, but its `getexif()` decodes
the whole image first: 0.64 s and 310 MB for an 81-megapixel PNG, for one line of settings. Walking
the chunks ourselves reads a few hundred bytes. A PNG is an 8-byte signature, then chunks of
(length: 4 bytes big-endian, type: 4 bytes, data, CRC-32 of type and data); the text chunks
(PNG spec 11.3.4) are tEXt (keyword, NUL, Latin-1 text), zTXt (keyword, NUL, method, zlib data) and
iTXt (keyword, NUL, compressed?, method, language, NUL, translated keyword, NUL, UTF-8 text, zlib'ed
when compressed?). Everything here is bounded: chunks are skipped by seeking, only the wanted one is
read, inflating stops at `max_bytes`, and the walk stops at the image data (IDAT), as Pillow's open does.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import BinaryIO, NamedTuple

SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
MAX_CHUNK_LENGTH = 2**31 - 1            # the PNG spec's limit
# Real PNGs have a handful of chunks before their image data; a hostile one could hold millions
# of empty ones (12 bytes each), so the walk gives up after this many.
MAX_CHUNKS_BEFORE_IMAGE = 10_000
# Chunks Pillow inflates with a 1 MiB cap and then refuses the whole image over (its guard against
# zlib bombs): the text chunks and the ICC profile. Neither is needed to draw the picture.
EXTRAS = (*TEXT_CHUNKS, b"iCCP")


class PngText(NamedTuple):
    text: str | None        # the keyword's text; None when absent, malformed or over max_bytes
    too_long: bool          # the keyword's chunk was there but over max_bytes
    exif: bytes | None      # the eXIf chunk's data (a TIFF structure), when there is one within max_bytes


class _Chunk(NamedTuple):
    kind: bytes
    start: int              # where its data starts in the file
    length: int


def is_png(file: BinaryIO) -> bool:
    """Whether `file` starts with the PNG signature; leaves it positioned just after it."""
    file.seek(0)
    return file.read(len(SIGNATURE)) == SIGNATURE


def _chunks(file: BinaryIO):
    """The chunks after the signature, by their headers alone; stops at IEND or a cut-off header."""
    position = len(SIGNATURE)
    while True:
        file.seek(position)
        header = file.read(8)
        if len(header) < 8:
            return
        length, kind = struct.unpack(">I4s", header)
        if length > MAX_CHUNK_LENGTH:
            return
        yield _Chunk(kind, position + 8, length)
        if kind == b"IEND":
            return
        position += 8 + length + 4


def read_text(file: BinaryIO, keyword: str, max_bytes: int) -> PngText | None:
    """`keyword`'s text from the chunks before the image data (the last such chunk wins, as in Pillow)
    and the eXIf chunk's data; None when `file` is not a PNG. Never raises for what is in the file."""
    if not is_png(file):
        return None
    text, too_long, exif = None, False, None
    wanted = keyword.encode("latin-1")
    for count, chunk in enumerate(_chunks(file)):
        if chunk.kind == b"IDAT" or count >= MAX_CHUNKS_BEFORE_IMAGE:
            break
        if chunk.kind == b"eXIf" and chunk.length <= max_bytes:
            exif = _data(file, chunk)
        elif chunk.kind in TEXT_CHUNKS and _keyword(file, chunk) == wanted:
            text, too_long = None, chunk.length > max_bytes
            data = None if too_long else _data(file, chunk)
            try:
                text = _decode(chunk.kind, data, max_bytes) if data is not None else None
            except _TooLong:
                too_long = True
    return PngText(text, too_long, exif)


def _keyword(file: BinaryIO, chunk: _Chunk) -> bytes | None:
    file.seek(chunk.start)
    head = file.read(min(chunk.length, 80))     # keywords are 1-79 bytes, then a NUL
    end = head.find(b"\0")
    return head[:end] if end > 0 else None


def _data(file: BinaryIO, chunk: _Chunk) -> bytes | None:
    """The chunk's data, or None when it is cut off or its CRC is wrong (a damaged file)."""
    file.seek(chunk.start)
    data = file.read(chunk.length)
    crc = file.read(4)
    if len(data) < chunk.length or len(crc) < 4:
        return None
    return data if zlib.crc32(chunk.kind + data) == struct.unpack(">I", crc)[0] else None


class _TooLong(Exception):
    pass


def _decode(kind: bytes, data: bytes, max_bytes: int) -> str | None:
    """A text chunk's text (its keyword already matched); None when malformed, _TooLong past max_bytes."""
    body = data[data.index(b"\0") + 1:]
    try:
        if kind == b"tEXt":
            return body.decode("latin-1")
        if kind == b"zTXt":
            return _inflate(body[1:], max_bytes).decode("latin-1") if body[:1] == b"\0" else None
        compressed, method = body[0], body[1]           # iTXt
        _language, _translated, text = body[2:].split(b"\0", 2)
        if compressed:
            return _inflate(text, max_bytes).decode("utf-8") if method == 0 else None
        return text.decode("utf-8")
    except (IndexError, ValueError, zlib.error):     # short fields, missing NULs, bad UTF-8, bad zlib data
        return None


def _inflate(data: bytes, max_bytes: int) -> bytes:
    """zlib data inflated, at most max_bytes of it: a 1 KB chunk can hold a gigabyte of text."""
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, max_bytes + 1)    # one byte more shows there is more
    if len(out) > max_bytes:
        raise _TooLong
    if not inflater.eof:
        raise zlib.error("the compressed text is cut off")
    return out


# -- the picture without its extras -----------------------------------------------------------------

def without_extras(file: BinaryIO) -> BinaryIO | None:
    """A read-only view of the PNG `file` minus its EXTRAS chunks, for Pillow to decode the picture
    from; None when `file` is not a PNG. Every kept chunk is whole, so its CRC still holds."""
    if not is_png(file):
        return None
    kept: list[list[int]] = [[0, len(SIGNATURE)]]      # [start, end) byte ranges of the file
    for chunk in _chunks(file):
        begin, end = chunk.start - 8, chunk.start + chunk.length + 4
        if chunk.kind in EXTRAS:
            continue
        if kept[-1][1] == begin:
            kept[-1][1] = end       # the IDAT chunks of a big image run on: one range, not thousands
        else:
            kept.append([begin, end])
    return io.BufferedReader(_Ranges(file, kept))


class _Ranges(io.RawIOBase):
    """Byte ranges of a file read as if they were one file."""

    def __init__(self, file: BinaryIO, ranges: list[list[int]]):
        super().__init__()
        self.file, self.ranges, self.position = file, ranges, 0
        self.size = sum(end - start for start, end in ranges)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer) -> int:
        skipped = 0
        for start, end in self.ranges:
            inside = self.position - skipped
            if inside < end - start:
                self.file.seek(start + inside)
                wanted = min(len(buffer), end - start - inside)
                got = self.file.readinto(memoryview(buffer)[:wanted])
                self.position += got
                return got
            skipped += end - start
        return 0
