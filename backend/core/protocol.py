"""The wire format between the Blender add-on and the backend process.

Standard library and numpy only (no torch, no bpy): Blender's Python and the
backend both import this one module. It frames messages; `backend.core.messages`
builds and parses them. The full specification, with every message, is in
docs/protocol.md; in short, a frame is::

    offset  size  field
    0       4     magic b"SRBF"
    4       2     protocol version, uint16 little-endian (PROTOCOL_VERSION)
    6       2     reserved, 0
    8       4     header length H, uint32 little-endian
    12      8     payload length P, uint64 little-endian
    20      H     header: a UTF-8 JSON object {"message": {...}, "arrays": [...]}
    20+H    P     payload: the raw little-endian array buffers, each padded to 8 bytes

Arrays inside the message are replaced by ``{"$array": i}``; ``arrays[i]`` is
``{"dtype": "<f4", "shape": [V, 3]}`` and its bytes follow the previous array's
(padded) end in the payload. Only JSON and raw numbers cross the pipe: nothing is
ever unpickled or evaluated, every length is checked against a limit before any
buffer is allocated, and only the dtypes in `ALLOWED_DTYPES` are accepted.

    write_frame(stream, {"type": "cancel", "fit_id": 3})
    message = read_frame(stream)   # None at a clean end of stream
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

from .messages import MESSAGE_FIELDS

PROTOCOL_VERSION = 1
MAGIC = b"SRBF"
_PREFIX = struct.Struct("<4sHHIQ")
PREFIX_SIZE = _PREFIX.size  # 20
ALIGNMENT = 8

MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_FRAME_BYTES = 1024 * 1024 * 1024
MAX_ARRAYS = 65536
MAX_NDIM = 8
MAX_DEPTH = 32

# Little-endian (or byte-sized) plain numbers only: no objects, strings, records.
ALLOWED_DTYPES = frozenset(
    ["|b1", "|u1", "|i1", "<u2", "<i2", "<f2", "<u4", "<i4", "<f4", "<u8", "<i8", "<f8"]
)

_ARRAY_KEY = "$array"


class ProtocolError(ValueError):
    """A frame that breaks the wire format; the stream cannot be trusted after it."""


class ProtocolVersionError(ProtocolError):
    """The peer speaks another protocol version (add-on and backend do not match)."""


class MessageError(ProtocolError):
    """A well-framed message with bad content; the stream is still in sync."""


def encode_frame(message: dict, version: int = PROTOCOL_VERSION) -> bytes:
    """One frame as bytes (see `frame_chunks`; `write_frame` avoids the copy)."""
    return b"".join(frame_chunks(message, version))


def frame_chunks(message: dict, version: int = PROTOCOL_VERSION) -> list:
    """Encode ``message`` into a list of bytes-like chunks that form one frame.

    message: a dict with a known "type" and that type's fields (`MESSAGE_FIELDS`);
    values are JSON types (dict with str keys, list, tuple, str, int, float, bool,
    None), numpy scalars, or numpy arrays of an allowed dtype (any shape, any
    layout; copied only when not C-contiguous little-endian). ``version`` is for
    tests of the version check. Raises ProtocolError for anything else.
    """
    validate_message(message)
    arrays: list[np.ndarray] = []
    plain = _replace_arrays(message, arrays, 0)
    specs = [{"dtype": a.dtype.str, "shape": list(a.shape)} for a in arrays]
    try:
        header = json.dumps({"message": plain, "arrays": specs}, separators=(",", ":"),
                            ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as exc:  # e.g. a float subclass json cannot write
        raise ProtocolError(f"message cannot be encoded as JSON: {exc}") from exc
    if len(header) > MAX_HEADER_BYTES:
        raise ProtocolError(
            f"the {message['type']!r} message's header is {len(header)} bytes, over the "
            f"{MAX_HEADER_BYTES}-byte limit: send large data as numpy arrays, not lists"
        )
    chunks: list = [b"", header]
    payload = 0
    for a in arrays:
        if a.nbytes:
            chunks.append(memoryview(a).cast("B"))
        pad = -a.nbytes % ALIGNMENT
        if pad:
            chunks.append(bytes(pad))
        payload += a.nbytes + pad
    if PREFIX_SIZE + len(header) + payload > MAX_FRAME_BYTES:
        raise ProtocolError(
            f"the {message['type']!r} message is {_mib(PREFIX_SIZE + len(header) + payload)}, "
            f"over the {_mib(MAX_FRAME_BYTES)} frame limit: send fewer or smaller images"
        )
    chunks[0] = _PREFIX.pack(MAGIC, version, 0, len(header), payload)
    return chunks


def write_frame(stream: BinaryIO, message: dict) -> int:
    """Encode ``message`` and write it to a binary stream, then flush.

    Array buffers are written straight from memory (no copy into one big buffer).
    Returns the number of bytes written.
    """
    return write_chunks(stream, frame_chunks(message))


def write_chunks(stream: BinaryIO, chunks: list) -> int:
    """Write a frame already encoded by `frame_chunks`, then flush; returns its size."""
    total = 0
    for chunk in chunks:
        view = memoryview(chunk)
        while len(view):
            n = stream.write(view)
            if n is None:  # a non-blocking raw stream that is full
                raise ProtocolError("the output stream is non-blocking; use a blocking pipe")
            view = view[n:]
            total += n
    stream.flush()
    return total


def read_frame(
    stream: BinaryIO,
    max_frame_bytes: int = MAX_FRAME_BYTES,
    max_header_bytes: int = MAX_HEADER_BYTES,
) -> dict | None:
    """Read one frame from a binary stream and decode it into a message dict.

    Returns None when the stream ends cleanly before a frame starts. Raises
    ProtocolVersionError for another protocol version, MessageError for a complete
    frame with bad content (the stream is still in sync), and ProtocolError for a
    broken frame: bad magic, a length over the limits (checked before anything is
    allocated) or a stream that ends inside the frame. Arrays come back as
    writable numpy arrays sharing one buffer.
    """
    prefix = _read_exact(stream, PREFIX_SIZE, "frame prefix", allow_eof=True)
    if prefix is None:
        return None
    header_len, payload_len = _parse_prefix(prefix, max_frame_bytes, max_header_bytes)
    header = _read_exact(stream, header_len, "frame header")
    payload = _read_exact(stream, payload_len, "frame payload")
    return _decode_body(header, payload)


def decode_frame(
    data, max_frame_bytes: int = MAX_FRAME_BYTES, max_header_bytes: int = MAX_HEADER_BYTES
) -> dict:
    """Decode exactly one frame held in a bytes-like object (see `read_frame`)."""
    view = memoryview(data).cast("B")
    if len(view) < PREFIX_SIZE:
        raise ProtocolError(
            f"truncated frame: {len(view)} bytes, shorter than the {PREFIX_SIZE}-byte prefix"
        )
    header_len, payload_len = _parse_prefix(bytes(view[:PREFIX_SIZE]), max_frame_bytes,
                                            max_header_bytes)
    expected = PREFIX_SIZE + header_len + payload_len
    if len(view) != expected:
        kind = "truncated frame" if len(view) < expected else "trailing bytes after frame"
        raise ProtocolError(f"{kind}: got {len(view)} bytes, the prefix announces {expected}")
    header = bytes(view[PREFIX_SIZE:PREFIX_SIZE + header_len])
    payload = bytearray(view[PREFIX_SIZE + header_len:])
    return _decode_body(header, payload)


def iter_frames(stream: BinaryIO, **limits) -> Iterator[dict]:
    """Yield messages from a stream until it ends cleanly."""
    while (message := read_frame(stream, **limits)) is not None:
        yield message


def validate_message(message) -> None:
    """Check that ``message`` is a dict of a known type with that type's fields.

    Raises MessageError naming the problem.
    """
    if not isinstance(message, dict):
        raise MessageError(f"a message must be a JSON object, got {type(message).__name__}")
    kind = message.get("type")
    if not isinstance(kind, str) or kind not in MESSAGE_FIELDS:
        raise MessageError(
            f"unknown message type {kind!r}; known types: {', '.join(sorted(MESSAGE_FIELDS))}"
        )
    missing = [f for f in MESSAGE_FIELDS[kind] if f not in message]
    if missing:
        raise MessageError(f"the {kind!r} message lacks the field(s) {', '.join(missing)}")


def _parse_prefix(prefix: bytes, max_frame_bytes: int, max_header_bytes: int) -> tuple[int, int]:
    magic, version, reserved, header_len, payload_len = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ProtocolError(
            f"not a softras-blender frame (starts with {prefix[:8]!r}): the peer wrote "
            "something other than protocol frames to the pipe"
        )
    if version != PROTOCOL_VERSION:
        raise ProtocolVersionError(
            f"the peer speaks wire protocol version {version}, this side speaks "
            f"{PROTOCOL_VERSION}: the add-on and its backend come from different releases; "
            "install matching versions (the add-on ships its own backend folder)"
        )
    if reserved != 0:
        raise ProtocolError(f"reserved prefix field is {reserved}, expected 0")
    if header_len > max_header_bytes:
        raise ProtocolError(
            f"frame header of {header_len} bytes exceeds the {max_header_bytes}-byte limit"
        )
    total = PREFIX_SIZE + header_len + payload_len
    if total > max_frame_bytes:
        raise ProtocolError(
            f"frame of {_mib(total)} exceeds the {_mib(max_frame_bytes)} limit; "
            "send fewer or smaller images (or raise the limit on both sides)"
        )
    return header_len, payload_len


def _decode_body(header: bytes, payload: bytearray) -> dict:
    try:
        decoded = json.loads(header.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MessageError(f"frame header is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(decoded, dict) or set(decoded) != {"message", "arrays"}:
        raise MessageError('frame header must be a JSON object {"message": ..., "arrays": ...}')
    specs = decoded["arrays"]
    if not isinstance(specs, list) or len(specs) > MAX_ARRAYS:
        raise MessageError(f'"arrays" must be a list of at most {MAX_ARRAYS} array specs')
    arrays = []
    offset = 0
    for i, spec in enumerate(specs):
        dtype, shape = _parse_spec(spec, i)
        nbytes = dtype.itemsize * _product(shape)
        if offset + nbytes > len(payload):
            raise MessageError(
                f"array {i} ({spec['dtype']} {shape}) needs {nbytes} bytes at offset {offset}, "
                f"past the {len(payload)}-byte payload"
            )
        arrays.append(np.frombuffer(payload, dtype=dtype, count=_product(shape),
                                    offset=offset).reshape(shape))
        offset += nbytes + (-nbytes % ALIGNMENT)
    if offset != len(payload):
        raise MessageError(f"payload is {len(payload)} bytes but its arrays fill {offset}")
    used = [False] * len(arrays)
    message = _restore_arrays(decoded["message"], arrays, used, 0)
    if not all(used):
        raise MessageError(f"array {used.index(False)} is not referenced by the message")
    validate_message(message)
    return message


def _parse_spec(spec, index: int) -> tuple[np.dtype, tuple[int, ...]]:
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape"}:
        raise MessageError(f'array spec {index} must be {{"dtype": ..., "shape": [...]}}')
    if spec["dtype"] not in ALLOWED_DTYPES:
        raise MessageError(
            f"array {index} has dtype {spec['dtype']!r}; allowed: {sorted(ALLOWED_DTYPES)}"
        )
    shape = spec["shape"]
    if (not isinstance(shape, list) or len(shape) > MAX_NDIM
            or not all(type(n) is int and n >= 0 for n in shape)):
        raise MessageError(
            f"array {index} has shape {shape!r}; expected a list of at most {MAX_NDIM} "
            "non-negative integers"
        )
    return np.dtype(spec["dtype"]), tuple(shape)


def _product(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _replace_arrays(value, arrays: list, depth: int):
    """Copy of ``value`` with arrays replaced by {"$array": i} (appended to arrays)."""
    if depth > MAX_DEPTH:
        raise ProtocolError(f"message nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, np.ndarray):
        arrays.append(_wire_array(value))
        return {_ARRAY_KEY: len(arrays) - 1}
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ProtocolError(f"message keys must be strings, got {key!r}")
            if key == _ARRAY_KEY:
                raise ProtocolError(f"the key {_ARRAY_KEY!r} is reserved for array references")
            out[key] = _replace_arrays(item, arrays, depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_replace_arrays(item, arrays, depth + 1) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, str | bool | int | float):
        return value
    raise ProtocolError(
        f"cannot send a value of type {type(value).__name__}: use JSON types or numpy arrays"
    )


def _wire_array(array: np.ndarray) -> np.ndarray:
    """The array as C-contiguous little-endian of an allowed dtype (copy only if needed)."""
    dtype = array.dtype
    if dtype.kind in "biuf" and dtype.byteorder == ">":
        dtype = dtype.newbyteorder("<")
    if dtype.str not in ALLOWED_DTYPES:
        raise ProtocolError(
            f"cannot send an array of dtype {array.dtype}; allowed: {sorted(ALLOWED_DTYPES)}"
        )
    if array.ndim > MAX_NDIM:
        raise ProtocolError(f"cannot send a {array.ndim}-d array (at most {MAX_NDIM} dims)")
    return np.asarray(array, dtype=dtype, order="C")  # keeps 0-d arrays 0-d


def _restore_arrays(value, arrays: list, used: list, depth: int):
    if depth > MAX_DEPTH:
        raise MessageError(f"message nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        if _ARRAY_KEY in value:
            index = value[_ARRAY_KEY]
            if len(value) != 1 or type(index) is not int or not 0 <= index < len(arrays):
                raise MessageError(f"bad array reference {value!r}")
            if used[index]:
                raise MessageError(f"array {index} is referenced twice")
            used[index] = True
            return arrays[index]
        return {k: _restore_arrays(v, arrays, used, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore_arrays(v, arrays, used, depth + 1) for v in value]
    return value


def _read_exact(stream: BinaryIO, size: int, what: str, allow_eof: bool = False):
    """``size`` bytes from ``stream`` as a bytearray; None on EOF at the start if allowed."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = stream.readinto(view[got:])
        if not n:
            if n is None:
                raise ProtocolError("the input stream is non-blocking; use a blocking pipe")
            if got == 0 and allow_eof:
                return None
            raise ProtocolError(
                f"truncated frame: the stream ended after {got} of the {size} bytes of the "
                f"{what}"
            )
        got += n
    return buffer


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
