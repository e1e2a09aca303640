"""Builders for hostile inputs: each writes files into a test's temp dir ``d``.

``o`` is a canary folder *outside* the temp dir: payloads try to create or change files
there (``o / "pwned"``), and the suite asserts that nothing in it changed.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from robaudit.models.zoo import LeNet


# ------------------------------------------------------------------------------- pickles / checkpoints

class Reduce:
    """An object whose unpickling calls ``func(*args)``."""

    def __init__(self, func: Callable, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def lenet_sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return LeNet().state_dict()


def checkpoint(d: Path, name: str = "ck.pt", *, arch: Any = "lenet", arch_kwargs: Any = None, meta: Any = None,
               sd: Any = None, legacy: bool = False) -> Path:
    ck: dict[str, Any] = {"arch": arch, "state_dict": lenet_sd() if sd is None else sd}
    if arch_kwargs is not None:
        ck["arch_kwargs"] = arch_kwargs
    if meta is not None:
        ck["meta"] = meta
    path = d / name
    torch.save(ck, path, _use_new_zipfile_serialization=not legacy)
    return path


def pickle_payload(d: Path, o: Path, name: str, func: Callable, *args: Any, legacy: bool = False) -> Path:
    path = d / name
    torch.save({"state_dict": lenet_sd(), "x": Reduce(func, *args)}, path, _use_new_zipfile_serialization=not legacy)
    return path


def raw_pickle(d: Path, name: str, obj: Any) -> Path:
    path = d / name
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return path


def zip_bomb(d: Path, name: str = "bomb.pt", declared: int = 1 << 30) -> Path:
    """A torch.save zip whose tensor entry *claims* ``declared`` bytes once inflated (patched header)."""
    path = d / name
    torch.save({"w": torch.zeros(16)}, path)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        entry = next(i for i in zf.infolist() if i.filename.endswith("data/0"))
    # central directory record of the entry: signature PK\1\2, uncompressed size at +24
    name_bytes = entry.filename.encode()
    pos = 0
    while True:
        pos = raw.index(b"PK\x01\x02", pos)
        name_len = struct.unpack_from("<H", raw, pos + 28)[0]
        if bytes(raw[pos + 46: pos + 46 + name_len]) == name_bytes:
            struct.pack_into("<I", raw, pos + 24, min(declared, 0xFFFFFFFE))
            break
        pos += 4
    path.write_bytes(bytes(raw))
    return path


def deflated_bomb(d: Path, name: str = "deflated.pt", mb: int = 96) -> Path:
    """A real deflate bomb: ``mb`` MB of zeros re-zipped with compression (~100 KB on disk)."""
    path = d / name
    torch.save({"w": torch.zeros(4)}, path)
    with zipfile.ZipFile(path) as src:
        entries = [(i, src.read(i.filename)) for i in src.infolist()]
    # rebuild with a large compressed entry streamed in chunks
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as dst:
        for info, data in entries:
            if info.filename.endswith("data/0"):
                with dst.open(info.filename, "w", force_zip64=True) as fh:
                    chunk = bytes(1 << 20)
                    for _ in range(mb):
                        fh.write(chunk)
            else:
                dst.writestr(info.filename, data)
    return path


def legacy_huge_storage(d: Path, name: str = "legacy_huge.pt") -> Path:
    """A legacy-format file whose pickle declares a storage of 2**30 floats (patched numel)."""
    path = d / name
    n = 70_000  # > 65535: numel is stored as a 4-byte BININT that can be patched in place
    torch.save({"w": torch.zeros(n)}, path, _use_new_zipfile_serialization=False)
    raw = bytearray(path.read_bytes())
    needle = b"J" + struct.pack("<i", n)  # BININT n
    pos = raw.index(needle)
    raw[pos + 1: pos + 5] = struct.pack("<i", 1 << 30)
    path.write_bytes(bytes(raw))
    return path


def expanded_sd(d: Path, name: str = "expanded.pt") -> Path:
    sd = dict(lenet_sd())
    sd["fc3.weight"] = torch.zeros(1).expand(10 ** 6, 84)
    sd["fc3.bias"] = torch.zeros(1).expand(10 ** 6)
    path = d / name
    torch.save(sd, path)
    return path


def truncated(d: Path, name: str = "trunc.pt") -> Path:
    full = checkpoint(d, "full.pt")
    path = d / name
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    return path


# ------------------------------------------------------------------------------- TorchScript

def torchscript(d: Path, name: str = "ts.pt", *, meta: str | None = None, module: torch.nn.Module | None = None) -> Path:
    torch.manual_seed(0)
    net = module if module is not None else LeNet()
    scripted = torch.jit.script(net)
    extra = {"robaudit.json": meta} if meta is not None else {}
    path = d / name
    torch.jit.save(scripted, str(path), _extra_files=extra)
    return path


class RaisingNet(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("scripted failure")


# ------------------------------------------------------------------------------- ONNX

def onnx_model(d: Path, name: str = "m.onnx", *, external: dict[str, str] | None = None,
               ext_file: tuple[str, bytes] | None = None, op: str = "Gemm", nodes: bool = True) -> Path:
    """A 1×28×28 → 10 ONNX model (Flatten + Gemm); ``external`` makes its weight external data."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.full((10, 784), 0.01, dtype=np.float32), name="W")
    graph_nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1),
                   helper.make_node(op, ["f", "W"], ["y"], transB=1) if op == "Gemm" else helper.make_node(op, ["f", "W"], ["y"])]
    graph = helper.make_graph(graph_nodes if nodes else [], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 28, 28])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    if ext_file is not None:
        (d / ext_file[0]).write_bytes(ext_file[1])
    if external is not None:
        tensor = model.graph.initializer[0]
        tensor.ClearField("raw_data")
        tensor.ClearField("float_data")
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in external.items():
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    path = d / name
    path.write_bytes(model.SerializeToString())
    return path


WEIGHT_BYTES = np.full((10, 784), 0.01, dtype=np.float32).tobytes()


# ------------------------------------------------------------------------------- data

def npz(d: Path, name: str = "data.npz", *, n: int = 4, x: Any = None, y: Any = None, **extra: Any) -> Path:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(n, 1, 28, 28), dtype=np.uint8) if x is None else x
    y = np.arange(n) % 10 if y is None else y
    path = d / name
    np.savez(path, x=x, y=y, **extra)
    return path


def idx_files(folder: Path, *, n: int = 6, gz: bool = True, split: str = "test", corrupt: str | None = None) -> None:
    """Tiny IDX image/label files (the MNIST layout) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = "t10k" if split == "test" else "train"
    rng = np.random.default_rng(0)
    images = struct.pack(">BBBBIII", 0, 0, 8, 3, n, 28, 28) + rng.integers(0, 256, n * 784, dtype=np.uint8).tobytes()
    labels = struct.pack(">BBBBI", 0, 0, 8, 1, n) + bytes(i % 10 for i in range(n))
    if corrupt == "truncated":
        images = images[: len(images) // 2]
    elif corrupt == "magic":
        images = b"\x01\x02\x03\x04" + images[4:]
    for fname, payload in ((f"{stem}-images-idx3-ubyte", images), (f"{stem}-labels-idx1-ubyte", labels)):
        if gz:
            with gzip.open(folder / (fname + ".gz"), "wb") as fh:
                fh.write(payload)
        else:
            (folder / fname).write_bytes(payload)


def image_folder(d: Path, name: str = "imgs", *, bad: bool = False) -> Path:
    root = d / name
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        (root / cls / "0.png").write_bytes(b"not a png at all" if bad else _png())
    return root


def _png() -> bytes:
    """A valid 28×28 grayscale PNG, built by hand (no imaging library needed)."""
    import zlib

    rows = b"".join(b"\x00" + bytes(28) for _ in range(28))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


# ------------------------------------------------------------------------------- reports

def mutate(report: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Deep-copied ``report`` with the dotted ``path`` set to ``value`` (``None`` deletes when value is DELETE)."""
    out = json.loads(json.dumps(report))
    keys = path.split(".")
    node = out
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node[key]
    last = keys[-1]
    if value is DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


DELETE = object()


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth
