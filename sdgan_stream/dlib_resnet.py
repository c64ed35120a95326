"""dlib's face recognition ResNet, read from its ``.dat`` file and run in onnxruntime.

dlib's Python binding computes the 128-D face descriptor with its own convolutions (no BLAS in the
``dlib-bin`` wheel) and holds the GIL while it does: ~50-140 ms a face here, during which no other
Python thread of the job can run. The network itself is small (a 29-layer ResNet on a 150x150 chip,
~0.3 GMAC), so this module reads dlib's weights from the very file dlib loads
(``dlib_face_recognition_resnet_model_v1.dat`` in ``face-recognition-models``), builds the same network
as an ONNX graph in memory and runs it in onnxruntime, which releases the GIL: 5 ms a face against
dlib's 127 ms, both on one thread here.
The chip is still cut by dlib (``dlib.get_face_chip``, the cut its descriptor uses), so the embedding
is dlib's own up to float rounding (``tests/test_dlib_resnet.py`` compares them).

The network is the one of dlib's ``dnn_face_recognition_ex.cpp`` (``anet_type``); in input order:
a 7x7/2 convolution (32), max pool 3/2, then residual blocks of two 3x3 convolutions with affine
(frozen batch norm) layers: 3 x 32, a downsampling block + 3 x 64, one + 2 x 128, one + 2 x 256, one
downsampling block of 256, a global average and a 128-wide linear layer without bias. A downsampling
block adds a 2x2/2 average pool of its input to a stride-2 block; dlib pads the smaller of two added
tensors with zeros at the end of each axis (channels, rows, columns), which the graph does explicitly.

The file is read by the format of dlib's ``serialize`` (``dlib/serialize.h``, ``dlib/dnn/layers.h``):
integers are a length byte (bit 7: negative) and that many little-endian bytes, strings a length and
the characters, tensors a version, four dimensions and little-endian float32 data. The layers are
found by their version strings in the order dlib writes them (input side first); only the fields the
network needs are read, and the sequence is checked against the architecture before use.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import WeightsError

log = logging.getLogger(__name__)

__all__ = ["CHIP_SIZE", "CHIP_PADDING", "DlibLayer", "DlibResNet", "build_onnx", "read_dlib_layers"]

CHIP_SIZE = 150  # dlib's input_rgb_image_sized<150>
CHIP_PADDING = 0.25  # compute_face_descriptor's default chip padding

# A layer's version string, preceded by its packed length (one length byte, then the length).
_LAYER_TAG = re.compile(rb"\x01([\x04-\x16])(con_4|con_5|affine_2|affine_|relu_2|relu_|max_pool_2|avg_pool_2|add_prev_|fc_2|fc_3|input_rgb_image_sized)")


@dataclass(frozen=True)
class DlibLayer:
    """One layer as read from the file: its kind and what the network needs of it."""

    kind: str  # "con", "affine", "relu", "max_pool", "avg_pool", "add_prev", "fc", "input"
    weights: np.ndarray | None = None  # con: (out, in, kh, kw); affine: (2, C) gamma, beta; fc: (in, out)
    bias: np.ndarray | None = None  # con: (out,)
    window: tuple[int, int] = (0, 0)  # con kernel / pool window (0, 0: the whole input)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    mean_rgb: tuple[float, float, float] | None = None  # input: the mean subtracted per channel


class _Reader:
    """dlib's serialization primitives over a byte string."""

    def __init__(self, data: bytes, position: int) -> None:
        self.data = data
        self.at = position

    def integer(self) -> int:
        head = self.data[self.at]
        size, negative = head & 0x0F, head & 0x80
        value = int.from_bytes(self.data[self.at + 1 : self.at + 1 + size], "little")
        self.at += 1 + size
        return -value if negative else value

    def real(self) -> float:
        """dlib's portable float: a packed 64-bit mantissa and a packed 16-bit exponent."""
        mantissa = self.integer()
        exponent = self.integer()
        return float(np.ldexp(float(mantissa), exponent))

    def tensor(self) -> np.ndarray:
        version = self.integer()
        if version != 2:
            raise WeightsError(f"unexpected dlib tensor version {version}")
        shape = tuple(self.integer() for _ in range(4))
        count = int(np.prod(shape))
        values = np.frombuffer(self.data, "<f4", count=count, offset=self.at).astype(np.float32)
        self.at += 4 * count
        return values.reshape(shape)

    def alias_shape(self) -> tuple[int, ...]:
        version = self.integer()
        if version != 1:
            raise WeightsError(f"unexpected dlib alias tensor version {version}")
        return tuple(self.integer() for _ in range(4))


def read_dlib_layers(path: str | Path) -> list[DlibLayer]:
    """The layers of a dlib network file with parameters, input side first."""
    data = Path(path).read_bytes()
    layers: list[DlibLayer] = []
    position = 0
    while (match := _LAYER_TAG.search(data, position)) is not None:
        if match.group(1)[0] != len(match.group(2)):  # the length byte must be the string's own
            position = match.start() + 1
            continue
        reader = _Reader(data, match.end())
        layers.append(_read_layer(match.group(2).decode("ascii"), reader))
        position = reader.at
    return layers


def _read_layer(version: str, reader: _Reader) -> DlibLayer:
    if version == "input_rgb_image_sized":
        mean = (reader.real(), reader.real(), reader.real())
        return DlibLayer("input", mean_rgb=mean)
    if version.startswith("con_"):
        params = reader.tensor()
        filters = reader.integer()
        window = (reader.integer(), reader.integer())
        stride = (reader.integer(), reader.integer())
        padding = (reader.integer(), reader.integer())
        shape = reader.alias_shape()
        bias_shape = reader.alias_shape()
        flat = params.ravel()
        size = int(np.prod(shape))
        if shape[0] != filters or shape[2:] != window or flat.size != size + int(np.prod(bias_shape)):
            raise WeightsError(f"dlib convolution with inconsistent shapes {shape} / {params.shape}")
        return DlibLayer("con", weights=flat[:size].reshape(shape), bias=flat[size:].copy(), window=window,
                         stride=stride, padding=padding)
    if version.startswith("affine_"):
        params = reader.tensor().ravel()
        gamma = reader.alias_shape()
        channels = int(np.prod(gamma))
        if params.size != 2 * channels:
            raise WeightsError(f"dlib affine layer with {params.size} parameters for {channels} channels")
        return DlibLayer("affine", weights=params.reshape(2, channels))
    if version.startswith(("max_pool_", "avg_pool_")):
        window = (reader.integer(), reader.integer())
        stride = (reader.integer(), reader.integer())
        padding = (reader.integer(), reader.integer())
        return DlibLayer(version[:8].rstrip("_"), window=window, stride=stride, padding=padding)
    if version.startswith("fc_"):
        outputs, inputs = reader.integer(), reader.integer()
        params = reader.tensor().ravel()
        if params.size != inputs * outputs:  # fc_no_bias: the weights alone, (inputs, outputs)
            raise WeightsError(f"dlib fc layer with {params.size} parameters for {inputs}x{outputs} (only no-bias is read)")
        return DlibLayer("fc", weights=params.reshape(inputs, outputs))
    return DlibLayer("relu" if version.startswith("relu") else "add_prev")


# The kinds in file order for dlib's anet_type: the stem, then per residual block the kinds between two
# blocks ("down": a stride-2 block with the pooled shortcut; "same": a stride-1 block), then the head.
_STEM = ["input", "con", "affine", "relu", "max_pool"]
_BLOCK = ["con", "affine", "relu", "con", "affine"]
_DOWN = [*_BLOCK, "avg_pool", "add_prev", "relu"]
_SAME = [*_BLOCK, "add_prev", "relu"]
_PLAN = ["same"] * 3 + ["down"] + ["same"] * 3 + ["down"] + ["same"] * 2 + ["down"] + ["same"] * 2 + ["down"]
_HEAD = ["avg_pool", "fc"]


def _expected_kinds() -> list[str]:
    kinds = list(_STEM)
    for block in _PLAN:
        kinds += _DOWN if block == "down" else _SAME
    return kinds + _HEAD


class _Graph:
    """Builds the ONNX graph node by node (NCHW float32)."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0

    def name(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def constant(self, value: np.ndarray, stem: str) -> str:
        name = self.name(stem)
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], **attributes) -> str:
        out = self.name(op.lower())
        self.nodes.append(self.helper.make_node(op, inputs, [out], **attributes))
        return out

    def layer(self, layer: DlibLayer, x: str) -> str:
        if layer.kind == "con":
            (ph, pw), (kh, kw) = layer.padding, layer.window
            return self.node("Conv", [x, self.constant(layer.weights, "w"), self.constant(layer.bias, "b")],
                             kernel_shape=[kh, kw], strides=list(layer.stride), pads=[ph, pw, ph, pw])
        if layer.kind == "affine":
            gamma, beta = (v.reshape(1, -1, 1, 1) for v in layer.weights)
            return self.node("Add", [self.node("Mul", [x, self.constant(gamma, "gamma")]), self.constant(beta, "beta")])
        if layer.kind == "relu":
            return self.node("Relu", [x])
        if layer.kind == "max_pool":
            return self.pool("MaxPool", layer, x)
        raise WeightsError(f"unexpected dlib layer {layer.kind} here")

    def pool(self, op: str, layer: DlibLayer, x: str) -> str:
        if layer.padding != (0, 0):
            raise WeightsError("padded pooling is not supported")  # anet_type has none
        return self.node(op, [x], kernel_shape=list(layer.window), strides=list(layer.stride))

    def add_padded(self, a: str, b: str, shape_a: tuple[int, int, int], shape_b: tuple[int, int, int]) -> tuple[str, tuple[int, int, int]]:
        """``a + b`` as dlib adds tensors of unequal size: each zero-padded at the end to the larger."""
        target = tuple(max(p, q) for p, q in zip(shape_a, shape_b))
        padded = []
        for name, shape in ((a, shape_a), (b, shape_b)):
            if shape != target:
                ends = [0, *(t - s for t, s in zip(target, shape))]
                name = self.node("Pad", [name, self.constant(np.array([0, 0, 0, 0, *ends], np.int64), "pads")])
            padded.append(name)
        return self.node("Add", padded), target  # type: ignore[return-value]


def _conv_out(size: int, layer: DlibLayer, axis: int) -> int:
    return (size + 2 * layer.padding[axis] - layer.window[axis]) // layer.stride[axis] + 1


def build_onnx(layers: list[DlibLayer]):  # noqa: ANN201 (onnx.ModelProto; onnx is imported lazily)
    """The ONNX model (input ``chips``: (N, 150, 150, 3) uint8 RGB; output ``descriptors``: (N, 128))."""
    kinds = [layer.kind for layer in layers]
    if kinds != _expected_kinds():
        raise WeightsError(f"not dlib's face recognition ResNet (anet_type): layers {kinds[:12]}...")
    from onnx import TensorProto, helper

    graph = _Graph()
    mean = np.array(layers[0].mean_rgb, np.float32).reshape(1, 3, 1, 1)
    x = graph.node("Transpose", ["chips"], perm=[0, 3, 1, 2])
    x = graph.node("Cast", [x], to=TensorProto.FLOAT)
    x = graph.node("Mul", [graph.node("Sub", [x, graph.constant(mean, "mean")]), graph.constant(np.float32(1 / 256), "scale")])
    size, channels = CHIP_SIZE, 3
    for layer in layers[1:5]:
        x = graph.layer(layer, x)
        if layer.kind in ("con", "max_pool"):
            size = _conv_out(size, layer, 0)
        if layer.kind == "con":
            channels = layer.weights.shape[0]
    at = 5
    for block in _PLAN:
        inputs, in_shape = x, (channels, size, size)
        first = layers[at]
        for layer in layers[at : at + len(_BLOCK)]:
            x = graph.layer(layer, x)
        out_channels = first.weights.shape[0]
        out_size = _conv_out(size, first, 0)  # the second convolution keeps the size (stride 1, padded)
        at += len(_BLOCK)
        shortcut, short_shape = inputs, in_shape
        if block == "down":
            pool = layers[at]
            shortcut = graph.pool("AveragePool", pool, inputs)
            short_shape = (channels, _conv_out(size, pool, 0), _conv_out(size, pool, 0))
            at += 1
        x, (channels, size, _) = graph.add_padded(x, shortcut, (out_channels, out_size, out_size), short_shape)
        x = graph.node("Relu", [x])
        at += 2  # add_prev, relu
    x = graph.node("GlobalAveragePool", [x])
    x = graph.node("Flatten", [x])
    x = graph.node("MatMul", [x, graph.constant(layers[-1].weights, "fc")])
    graph.nodes[-1].output[0] = "descriptors"
    model = helper.make_model(
        helper.make_graph(graph.nodes, "dlib_face_recognition_resnet_v1",
                          [helper.make_tensor_value_info("chips", TensorProto.UINT8, ["N", CHIP_SIZE, CHIP_SIZE, 3])],
                          [helper.make_tensor_value_info("descriptors", TensorProto.FLOAT, ["N", 128])],
                          initializer=graph.initializers),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    return model


class DlibResNet:
    """dlib's 128-D face descriptor network in onnxruntime: ``descriptors(chips)`` for (N, 150, 150, 3)
    uint8 RGB chips cut by ``dlib.get_face_chip`` (size 150, padding 0.25).

    >>> from sdgan_stream.landmarks import dlib_model_path
    >>> network = DlibResNet(dlib_model_path("dlib_face_recognition_resnet_model_v1.dat"))
    >>> network.descriptors(np.zeros((2, CHIP_SIZE, CHIP_SIZE, 3), np.uint8)).shape
    (2, 128)
    """

    def __init__(self, path: str | Path, *, threads: int = 1) -> None:
        import onnxruntime as ort

        path = Path(path)
        try:
            layers = read_dlib_layers(path)
            model = build_onnx(layers)
        except (OSError, ValueError, IndexError) as exc:
            raise WeightsError(f"cannot read dlib's face recognition network from {path}: {exc}") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        log.info("dlib face recognition ResNet from %s in onnxruntime (%d layers)", path.name, len(layers))

    def descriptors(self, chips: np.ndarray) -> np.ndarray:
        chips = np.ascontiguousarray(chips, np.uint8)
        if chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
            raise ValueError(f"expected (N, {CHIP_SIZE}, {CHIP_SIZE}, 3) uint8 chips, got {chips.shape}")
        return self._session.run(["descriptors"], {"chips": chips})[0]
