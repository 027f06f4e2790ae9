"""The wire format (backend/core/protocol.py): round trips, limits, and hostile input."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct

import numpy as np
import pytest

from backend.core import messages, protocol
from backend.core.camera import CameraMatrices
from backend.core.protocol import (
    ALLOWED_DTYPES,
    MAGIC,
    PREFIX_SIZE,
    PROTOCOL_VERSION,
    MessageError,
    ProtocolError,
    ProtocolVersionError,
    decode_frame,
    encode_frame,
    read_frame,
    write_frame,
)

CAMERA = {"intrinsics": [[60.0, 0.0, 16.0], [0.0, 60.0, 16.0], [0.0, 0.0, 1.0]],
          "world_to_camera": np.eye(4).tolist(), "width": 32, "height": 32,
          "orthographic": False}
RNG = np.random.default_rng(0)


def sample_messages() -> list[dict]:
    """One message of every type, with the arrays each carries in practice."""
    vertices = RNG.standard_normal((50, 3)).astype(np.float32)
    faces = RNG.integers(0, 50, (96, 3)).astype(np.int32)
    return [
        {"type": "hello", "protocol": PROTOCOL_VERSION, "backend_version": "0.1.0",
         "python": "3.11.7", "torch": "2.13.0+cpu", "cupy": None, "device": "cpu",
         "cuda_available": False, "gpu_name": None, "pid": 1234},
        {"type": "start_fit", "fit_id": 1, "vertices": vertices, "faces": faces,
         "views": [{"name": f"cam{i}", "camera": CAMERA, "held_out": i == 2,
                    "image": RNG.random((32, 32, 4), dtype=np.float32)} for i in range(3)],
         "options": {"iterations": 40, "learning_rate": 0.01, "device": "auto"}},
        {"type": "start_fit", "fit_id": 2, "vertices": None, "faces": None,
         "views": [{"name": "u8", "camera": CAMERA, "held_out": False,
                    "image": RNG.integers(0, 255, (32, 32, 4), dtype=np.uint8)}],
         "options": {}},
        {"type": "progress", "fit_id": 1, "iteration": 10, "iterations": 40,
         "losses": {"silhouette": 0.25, "laplacian": 1e-3, "total": float("nan")},
         "mean_iou": 0.75, "view_iou": [0.7, 0.8], "elapsed": 1.5},
        {"type": "vertices", "fit_id": 1, "iteration": 10, "vertices": vertices, "faces": None},
        {"type": "vertices", "fit_id": 1, "iteration": 20, "vertices": vertices, "faces": faces},
        {"type": "done", "fit_id": 1, "status": "done", "message": "repaired 2 faces",
         "vertices": vertices, "faces": faces, "colors": np.ones((50, 3), np.float32),
         "topology_changed": False,
         "metrics": {"fit_iou": {"cam0": 0.9}, "heldout_iou": {"cam2": 0.85},
                     "mean_fit_iou": 0.9, "loss_history": [{"total": 0.5}, {"total": 0.4}],
                     "timing": {"total": 2.0}, "iterations": 40, "device": "cpu"}},
        {"type": "error", "fit_id": None, "message": "ünïcode message: CUDA missing",
         "kind": "fit", "fatal": False},
        {"type": "heartbeat", "busy": True, "fit_id": 1, "uptime": 12.5},
        {"type": "cancel", "fit_id": 1},
        {"type": "shutdown"},
    ]


def assert_same(a, b):
    """Deep equality with arrays compared by dtype, shape and bytes (NaN == NaN)."""
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert isinstance(b, list) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, float) and np.isnan(a):
        assert isinstance(b, float) and np.isnan(b)
    else:
        assert a == b and type(a) is type(b)


def make_frame(header, payload=b"", version=PROTOCOL_VERSION, magic=MAGIC) -> bytes:
    """A frame built by hand, for input the encoder would refuse to produce."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<4sHHIQ", magic, version, 0, len(raw), len(payload)) + raw + payload


@pytest.mark.parametrize("message", sample_messages(), ids=lambda m: m["type"])
def test_every_message_type_round_trips(message):
    assert_same(message, decode_frame(encode_frame(message)))


def test_messages_stream_back_to_back_and_end_cleanly():
    stream = io.BytesIO()
    sizes = [write_frame(stream, m) for m in sample_messages()]
    assert stream.tell() == sum(sizes)
    stream.seek(0)
    for expected in sample_messages():
        assert read_frame(stream)["type"] == expected["type"]
    assert read_frame(stream) is None


@pytest.mark.parametrize("dtype", sorted(ALLOWED_DTYPES))
def test_every_allowed_dtype_round_trips(dtype):
    values = (np.arange(-3, 9) % 7).astype(dtype).reshape(3, 4)
    for array in (values, values[:, ::2], values.T, values.astype(values.dtype.newbyteorder(">"))):
        back = decode_frame(encode_frame({"type": "vertices", "fit_id": 0, "iteration": 0,
                                          "vertices": array, "faces": None}))["vertices"]
        assert back.dtype.str == dtype
        np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize("shape", [(0,), (0, 3), (5, 0, 2), ()])
def test_empty_and_zero_dimensional_arrays_keep_their_shape(shape):
    array = np.full(shape, 7, dtype=np.int32)
    message = {"type": "vertices", "fit_id": 0, "iteration": 0, "vertices": array,
               "faces": np.zeros(shape, dtype=np.float64)}
    back = decode_frame(encode_frame(message))
    assert_same(message, back)


def test_a_million_vertex_mesh_round_trips_through_a_stream():
    vertices = RNG.standard_normal((1_000_000, 3)).astype(np.float32)
    faces = RNG.integers(0, 1_000_000, (2_000_000, 3)).astype(np.int32)
    message = {"type": "done", "fit_id": 3, "status": "done", "message": "", "vertices": vertices,
               "faces": faces, "colors": None, "metrics": {}}
    stream = io.BytesIO()
    size = write_frame(stream, message)
    assert size >= vertices.nbytes + faces.nbytes
    stream.seek(0)
    back = read_frame(stream)
    np.testing.assert_array_equal(back["vertices"], vertices)
    np.testing.assert_array_equal(back["faces"], faces)
    assert back["vertices"].flags.writeable


def test_decoded_arrays_are_aligned_to_their_item_size():
    message = {"type": "vertices", "fit_id": 0, "iteration": 0,
               "vertices": {"a": np.ones(3, np.uint8), "b": np.ones(5, np.float64),
                            "c": np.ones(1, np.int16), "d": np.ones(2, np.float64)},
               "faces": None}
    back = decode_frame(encode_frame(message))["vertices"]
    for array in back.values():
        assert array.ctypes.data % array.dtype.itemsize == 0


def test_numpy_scalars_become_plain_numbers():
    back = decode_frame(encode_frame({"type": "heartbeat", "busy": np.bool_(True),
                                      "fit_id": np.int64(4), "uptime": np.float32(1.5)}))
    assert back == {"type": "heartbeat", "busy": True, "fit_id": 4, "uptime": 1.5}


# -- what the encoder refuses ------------------------------------------------------------

@pytest.mark.parametrize("bad, match", [
    (np.array([object()]), "dtype"),
    (np.array(["text"]), "dtype"),
    (np.zeros(2, np.complex64), "dtype"),
    (np.zeros(2, "datetime64[s]"), "dtype"),
    (b"raw bytes", "bytes"),
    (print, "builtin_function_or_method"),
    ({1: "non-string key"}, "keys must be strings"),
    ({"$array": 0}, "reserved"),
])
def test_encoder_refuses_values_that_are_not_json_or_plain_arrays(bad, match):
    with pytest.raises(ProtocolError, match=match):
        encode_frame({"type": "cancel", "fit_id": bad})


@pytest.mark.parametrize("message, match", [
    ({"type": "exec", "code": "print(1)"}, "unknown message type"),
    ({"fit_id": 1}, "unknown message type"),
    ({"type": "cancel"}, "lacks the field"),
    (["type", "cancel"], "JSON object"),
])
def test_encoder_refuses_unknown_or_incomplete_messages(message, match):
    with pytest.raises(MessageError, match=match):
        encode_frame(message)


def test_encoder_refuses_frames_over_the_limit(monkeypatch):
    monkeypatch.setattr(protocol, "MAX_FRAME_BYTES", 1000)
    with pytest.raises(ProtocolError, match="frame limit"):
        encode_frame({"type": "cancel", "fit_id": np.zeros(1000, np.uint8)})


# -- what the decoder refuses ------------------------------------------------------------

def test_every_truncation_of_a_frame_is_a_clear_error():
    frame = encode_frame(sample_messages()[4])
    for cut in range(1, len(frame)):
        with pytest.raises(ProtocolError, match="truncated"):
            read_frame(io.BytesIO(frame[:cut]))
        with pytest.raises(ProtocolError, match="truncated"):
            decode_frame(frame[:cut])


def test_trailing_bytes_after_a_frame_are_rejected():
    with pytest.raises(ProtocolError, match="trailing"):
        decode_frame(encode_frame({"type": "shutdown"}) + b"\0")


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"Traceback (most recent call last):\n  File \"x\"\n",
    bytes(range(256)) * 4,
    b"\x00" * 64,
], ids=["http", "text", "binary", "zeros"])
def test_garbage_is_not_a_frame(garbage):
    with pytest.raises(ProtocolError, match="not a softras-blender frame"):
        read_frame(io.BytesIO(garbage))


def test_another_protocol_version_is_named():
    frame = encode_frame({"type": "shutdown"}, version=PROTOCOL_VERSION + 1)
    with pytest.raises(ProtocolVersionError, match=f"version {PROTOCOL_VERSION + 1}.*speaks "
                                                   f"{PROTOCOL_VERSION}"):
        decode_frame(frame)


class CountingStream(io.RawIOBase):
    """An endless stream of zero bytes after ``head`` that counts what was read."""

    def __init__(self, head: bytes):
        self.head = head
        self.read_bytes = 0

    def readable(self):
        return True

    def readinto(self, buffer):
        n = len(buffer)
        data = (self.head[self.read_bytes:self.read_bytes + n]).ljust(n, b"\0")
        buffer[:n] = data
        self.read_bytes += n
        return n


@pytest.mark.parametrize("header_len, payload_len, match", [
    (protocol.MAX_HEADER_BYTES + 1, 0, "header of .* exceeds"),
    (10, protocol.MAX_FRAME_BYTES, "exceeds the"),
    (10, 2**63, "exceeds the"),
])
def test_oversized_frames_are_rejected_before_reading_or_allocating(header_len, payload_len,
                                                                    match):
    stream = CountingStream(struct.pack("<4sHHIQ", MAGIC, PROTOCOL_VERSION, 0, header_len,
                                        payload_len))
    with pytest.raises(ProtocolError, match=match):
        read_frame(stream)
    assert stream.read_bytes == PREFIX_SIZE


def test_the_limits_can_be_lowered_by_the_reader():
    frame = encode_frame({"type": "cancel", "fit_id": np.zeros(4096, np.uint8)})
    with pytest.raises(ProtocolError, match="exceeds"):
        decode_frame(frame, max_frame_bytes=4096)
    with pytest.raises(ProtocolError, match="header"):
        decode_frame(frame, max_header_bytes=8)


ARRAY_REF = {"$array": 0}


@pytest.mark.parametrize("header, payload, match", [
    (b"\xff\xfe not utf-8", b"", "UTF-8 JSON"),
    (b"{not json", b"", "UTF-8 JSON"),
    (b"[" * 100_000 + b"]" * 100_000, b"", "JSON"),
    ({"message": {"type": "shutdown"}}, b"", "must be a JSON object"),
    ({"message": {"type": "shutdown"}, "arrays": [], "extra": 1}, b"", "must be a JSON object"),
    ({"message": {"type": "exec", "code": "import os"}, "arrays": []}, b"", "unknown message"),
    ({"message": {"type": "cancel"}, "arrays": []}, b"", "lacks the field"),
    ({"message": {"type": "cancel", "fit_id": ARRAY_REF},
      "arrays": [{"dtype": "|O", "shape": [1]}]}, b"\0" * 8, "dtype '|O'"),
    ({"message": {"type": "cancel", "fit_id": ARRAY_REF},
      "arrays": [{"dtype": ">f4", "shape": [2]}]}, b"\0" * 8, "dtype '>f4'"),
    ({"message": {"type": "cancel", "fit_id": ARRAY_REF},
      "arrays": [{"dtype": "<U4", "shape": [1]}]}, b"\0" * 16, "dtype '<U4'"),
    ({"message": {"type": "cancel", "fit_id": ARRAY_REF},
      "arrays": [{"dtype": "<f4", "shape": [-1]}]}, b"", "non-negative"),
    ({"message": {"type": "cancel", "fit_id": ARRAY_REF},
      "arrays": [{"dtype": "<f4", "shape": [True]}]}, b"\0" * 8, "non-negative"),
    ({"message": {"type": "cancel", "fit_id": ARRAY_REF},
      "arrays": [{"dtype": "<f4", "shape": [1] * 9}]}, b"\0" * 8, "at most 8"),
    ({"message": {"type": "cancel", "fit_id": ARRAY_REF},
      "arrays": [{"dtype": "<f4", "shape": [4]}]}, b"\0" * 8, "past the 8-byte payload"),
    ({"message": {"type": "cancel", "fit_id": ARRAY_REF},
      "arrays": [{"dtype": "<f4", "shape": [2 ** 40, 2 ** 40]}]}, b"\0" * 8, "past the"),
    ({"message": {"type": "cancel", "fit_id": ARRAY_REF},
      "arrays": [{"dtype": "<f4", "shape": [1]}]}, b"\0" * 16, "arrays fill 8"),
    ({"message": {"type": "cancel", "fit_id": {"$array": 1}},
      "arrays": [{"dtype": "<f4", "shape": [1]}]}, b"\0" * 8, "bad array reference"),
    ({"message": {"type": "cancel", "fit_id": {"$array": "0"}},
      "arrays": [{"dtype": "<f4", "shape": [1]}]}, b"\0" * 8, "bad array reference"),
    ({"message": {"type": "cancel", "fit_id": [ARRAY_REF, ARRAY_REF]},
      "arrays": [{"dtype": "<f4", "shape": [1]}]}, b"\0" * 8, "referenced twice"),
    ({"message": {"type": "cancel", "fit_id": 1},
      "arrays": [{"dtype": "<f4", "shape": [1]}]}, b"\0" * 8, "not referenced"),
    ({"message": {"type": "cancel", "fit_id": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]
     ]]]]]]]]]]]]]]]]]]]]]]]]}, "arrays": []}, b"", "nests deeper"),
], ids=lambda v: None)
def test_malformed_frame_contents_are_message_errors(header, payload, match):
    with pytest.raises(MessageError, match=match):
        decode_frame(make_frame(header, payload))


def test_a_message_error_leaves_the_stream_in_sync():
    stream = io.BytesIO(make_frame({"message": {"type": "nope"}, "arrays": []})
                        + encode_frame({"type": "cancel", "fit_id": 5}))
    with pytest.raises(MessageError):
        read_frame(stream)
    assert read_frame(stream) == {"type": "cancel", "fit_id": 5}


class Boom:
    """Creates a file when unpickled: proof that nothing on the wire is unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.makedirs, (self.path,))


def test_pickles_are_never_executed(tmp_path):
    marker = str(tmp_path / "pwned")
    payload = pickle.dumps(Boom(marker))
    attempts = [
        payload,  # a bare pickle on the pipe
        make_frame(payload),  # a pickle as the header
        make_frame({"message": {"type": "cancel", "fit_id": ARRAY_REF},
                    "arrays": [{"dtype": "|O", "shape": [1]}]}, payload.ljust(64, b"\0")),
        make_frame({"message": {"type": "cancel", "fit_id": payload.hex()}, "arrays": []}),
    ]
    for data in attempts:
        try:
            message = read_frame(io.BytesIO(data))
        except ProtocolError:
            continue
        assert message["fit_id"] == payload.hex()  # a string stays a string
    assert not os.path.exists(marker)


# -- the messages (backend/core/messages.py) -----------------------------------------------


def test_a_start_fit_built_by_the_client_parses_back_on_the_backend():
    camera = CameraMatrices.from_dict(CAMERA)
    vertices = RNG.standard_normal((50, 3)).astype(np.float32)
    faces = RNG.integers(0, 50, (96, 3)).astype(np.int32)
    image = RNG.integers(0, 256, (32, 32, 4), dtype=np.uint8)
    views = [messages.View(camera, image, "cam0"), messages.View(camera, image / 255.0,
                                                                 "cam1", held_out=True)]
    sent = messages.start_fit(7, vertices, faces, views, {"iterations": 5})
    request = messages.parse_start_fit(decode_frame(encode_frame(sent)))
    assert request.fit_id == 7 and request.options == {"iterations": 5}
    np.testing.assert_array_equal(request.vertices, vertices)
    np.testing.assert_array_equal(request.faces, faces)
    assert [(v.name, v.held_out) for v in request.views] == [("cam0", False), ("cam1", True)]
    assert all(v.image.dtype == np.float32 for v in request.views)  # uint8 scaled to [0, 1]
    np.testing.assert_allclose(request.views[0].image, request.views[1].image, atol=1e-6)
    np.testing.assert_array_equal(request.views[1].camera.intrinsics, camera.intrinsics)


@pytest.mark.parametrize("change, text", [
    ({"views": [{"name": "x", "camera": CAMERA}]}, "has no image array"),
    ({"views": [{"image": np.zeros((2, 2, 4), np.float32)}]}, "malformed fit request"),
    ({"vertices": [[0.0, 0.0, 0.0]]}, "vertices must be an array or null"),
    ({"options": 3}, "malformed fit request"),
], ids=["no-image", "no-camera", "list-vertices", "options"])
def test_a_malformed_start_fit_is_a_value_error_saying_what_is_wrong(change, text):
    message = {**messages.start_fit(1, None, None, []), **change}
    with pytest.raises(ValueError, match=text):
        messages.parse_start_fit(message)


def test_newer_vertices_keep_an_unread_topology_change_of_the_same_fit():
    faces = np.zeros((1, 3), np.int32)
    first = messages.vertices(1, 0, np.zeros((4, 3)), faces)
    second = messages.vertices(1, 5, np.ones((4, 3)), None)
    kept = messages.newest_vertices(first, second)
    assert kept["iteration"] == 5 and kept["faces"] is first["faces"]
    other_fit = messages.vertices(2, 0, np.ones((4, 3)), None)
    assert messages.newest_vertices(first, other_fit)["faces"] is None
    assert messages.newest_vertices(None, second) is second


def test_every_built_message_passes_the_frame_check():
    built = [messages.cancel(None), messages.shutdown(),
             messages.heartbeat(False, None, 0, 1.5),
             messages.error(None, "no torch", kind="missing_dependency", fatal=True),
             messages.vertices(3, 10, np.zeros((4, 3)), None)]
    for message in built:
        assert decode_frame(encode_frame(message))["type"] == message["type"]
    with pytest.raises(ValueError, match="error kind must be one of"):
        messages.error(None, "?", kind="oops", fatal=False)
