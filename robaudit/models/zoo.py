"""Architectures robaudit ships, by name (for checkpoints and ``--arch``).

* ``lenet``: Johansson et al. 2022, App. A.1 (the sample model).
* ``resnet20``: He et al. 2016 CIFAR ResNet-20 with option-A shortcuts, key-compatible
  with the published ``resnet20-12fca82f.th`` weights (269,722 parameters).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from robaudit.errors import UsageError
from robaudit.hollow import hollow


class LeNet(nn.Module):
    """conv 5×5 (pad 2) → ReLU → maxpool 2 → conv 5×5 → ReLU → maxpool 2 → 400→120→84→C."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(120, 84)
        self.relu4 = nn.ReLU()
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.flatten(x)
        x = self.relu3(self.fc1(x))
        x = self.relu4(self.fc2(x))
        return self.fc3(x)


class ShortcutA(nn.Module):
    """Parameter-free "option A" shortcut: subsample by 2 and zero-pad channels by planes//4 per side."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = ShortcutA(planes)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    def __init__(self, num_blocks: tuple[int, int, int] = (3, 3, 3), num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        layers, in_planes = [], 16
        for planes, blocks, stride in zip((16, 32, 64), num_blocks, (1, 2, 2)):
            seq = []
            for i in range(blocks):
                seq.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            layers.append(nn.Sequential(*seq))
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(self.flatten(self.pool(x)))


@dataclass(frozen=True)
class ZooEntry:
    """One architecture robaudit ships.

    Attributes:
        build: factory returning a fresh, randomly initialised module.
        help: one line for ``robaudit info --list-arch``.
        input_shape: (C, H, W) of one sample.
        mean, std: default normalisation, applied when the user gives none.
        module_class: the class ``build`` returns (to recognise pickled/TorchScript copies).
        channels_kwarg: the build kwarg that sets the input channels (overrides ``input_shape[0]``).
    """

    build: Callable[..., nn.Module]
    help: str
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    module_class: type | None = None
    channels_kwarg: str | None = None


ZOO: dict[str, ZooEntry] = {
    "lenet": ZooEntry(LeNet, "LeNet of Johansson et al. App. A.1 (kwargs: in_channels, num_classes); 1×28×28",
                      (1, 28, 28), module_class=LeNet, channels_kwarg="in_channels"),
    "resnet20": ZooEntry(lambda num_classes=10: ResNetCifar((3, 3, 3), num_classes),
                         "CIFAR ResNet-20, option-A shortcuts (He et al. 2016); 3×32×32",
                         (3, 32, 32), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), module_class=ResNetCifar),
}


def build(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate a zoo architecture by name."""
    return ZOO[name].build(**kwargs)


def input_shape_for(name: str, arch_kwargs: Mapping[str, Any] | None = None) -> tuple[int, int, int]:
    """(C, H, W) for zoo architecture ``name`` built with ``arch_kwargs`` (channels may be a kwarg)."""
    entry = ZOO[name]
    shape = entry.input_shape
    if entry.channels_kwarg and arch_kwargs and entry.channels_kwarg in arch_kwargs:
        shape = (int(arch_kwargs[entry.channels_kwarg]),) + shape[1:]
    return shape


@dataclass(frozen=True)
class Arch:
    """A resolved ``--arch``: how to build the network and where the name came from.

    Attributes:
        name: the spec as given.
        kind: "zoo" | "torchvision" | "import".
        factory: callable(**kwargs) -> nn.Module (never downloads weights).
        entry: the ZooEntry for zoo names, else None.
    """

    name: str
    kind: str
    factory: Callable[..., nn.Module]
    entry: ZooEntry | None = None

    def accepts(self, kwarg: str) -> bool:
        """Whether the factory takes keyword ``kwarg`` (torchvision models all take num_classes)."""
        if self.kind == "torchvision":
            return kwarg == "num_classes"
        try:
            params = inspect.signature(self.factory).parameters
        except (TypeError, ValueError):
            return False
        return kwarg in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _torchvision_names() -> list[str]:
    import torchvision.models

    return list(torchvision.models.list_models())


_BUILDER = re.compile(r"@register_model\((?:name\s*=\s*)?(?P<name>[\"'][\w.]+[\"'])?\)(?P<between>.*?)\bdef\s+(?P<fn>\w+)\s*\(",
                      re.DOTALL)


def _torchvision_builder(name: str) -> Callable[..., nn.Module] | None:
    """torchvision's registered builder ``name`` from the one ``torchvision.models`` module that defines it.

    ``import torchvision.models`` runs torchvision's ``__init__``, which imports its datasets, io
    and ops and, through them, torch._dynamo: 2.8 s here, of which resnet18 needs 0.05 s. The
    classification builders live in the top-level modules of ``torchvision/models`` and are
    registered with ``@register_model()``; the module holding ``name`` is found by reading those
    files, and imported alone under hollow packages (:mod:`robaudit.hollow`). None when no
    top-level module registers ``name`` (then the whole package is imported).
    """
    try:
        spec = importlib.util.find_spec("torchvision")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    for file in sorted(folder.glob("*.py")):
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for found in _BUILDER.finditer(text):
            registered = found["name"].strip("\"'") if found["name"] else found["fn"]
            if registered != name or "@register_model" in found["between"]:
                continue
            module_name = f"torchvision.models.{file.stem}"
            hollow("torchvision.models")
            __import__(module_name)  # a first import of torchvision: held from Ctrl-C like every other one
            builder = getattr(sys.modules[module_name], found["fn"], None)
            return builder if callable(builder) else None
    return None


def resolve(spec: str, *, allow_import: bool = True, flag: str = "--arch") -> Arch:
    """Resolve an architecture name: a zoo name, a torchvision model name, or ``package.module:factory``.

    Args:
        spec: the name.
        allow_import: accept ``package.module:factory`` (only for names the user typed; a model
            file must not make robaudit import arbitrary modules).
        flag: how to name the source in error messages.

    Raises:
        UsageError: the name is unknown or the factory cannot be imported.
    """
    spec = spec.strip()
    if spec in ZOO:
        return Arch(spec, "zoo", ZOO[spec].build, ZOO[spec])
    if ":" in spec:
        if not allow_import:
            shown = spec if len(spec) <= 80 else spec[:80] + "…"
            raise UsageError(f"{flag} {shown!r} names code to import, which is only allowed from the command line; "
                             f"if you trust it, pass it there: --arch {shown}")
        return Arch(spec, "import", _import_factory(spec, flag))
    builder = _torchvision_builder(spec)  # works whether torchvision is hollow, whole or not imported yet
    if builder is not None:
        # weights=None: build the architecture only, never download anything.
        return Arch(spec, "torchvision", lambda **kw: builder(weights=None, **kw))
    if spec in _torchvision_names():
        import torchvision.models

        return Arch(spec, "torchvision", lambda **kw: torchvision.models.get_model(spec, weights=None, **kw))
    raise UsageError(f"{flag} {spec!r}: not a robaudit zoo name ({', '.join(ZOO)}), a torchvision model name, "
                     "or package.module:factory (see 'robaudit info --list-arch')")


def _import_factory(spec: str, flag: str) -> Callable[..., nn.Module]:
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise UsageError(f"{flag} {spec!r}: expected package.module:factory")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module failed while importing
        raise UsageError(f"{flag} {spec!r}: cannot import {module_name} ({type(exc).__name__}: {exc})") from None
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"{flag} {spec!r}: {module_name} has no attribute {attr_path!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(f"{flag} {spec!r}: {attr_path} is not callable")
    return obj


def infer_kwargs(arch: Arch, state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Build kwargs read off a state_dict's shapes: ``num_classes`` (rows of the last weight
    matrix) and ``in_channels`` (input channels of the first conv kernel), when the factory takes them."""
    kwargs: dict[str, Any] = {}
    weights = [v for k, v in state_dict.items() if k.endswith("weight") and torch.is_tensor(v) and v.dim() >= 2]
    if weights and arch.accepts("num_classes"):
        kwargs["num_classes"] = int(weights[-1].shape[0])
    convs = [w for w in weights if w.dim() == 4]
    if convs and arch.entry is not None and arch.entry.channels_kwarg and arch.accepts(arch.entry.channels_kwarg):
        kwargs[arch.entry.channels_kwarg] = int(convs[0].shape[1])
    return kwargs


def match_module(net: nn.Module) -> tuple[str, dict[str, Any]] | None:
    """The zoo name (and build kwargs) of a module that is a copy of a zoo architecture, or None.

    Recognises pickled instances and TorchScript modules (by ``original_name``) whose
    state_dict has exactly the keys and shapes of the zoo build.
    """
    cls_name = getattr(net, "original_name", None) or type(net).__name__
    sd = net.state_dict()
    for name, entry in ZOO.items():
        if entry.module_class is None or entry.module_class.__name__ != cls_name:
            continue
        arch = Arch(name, "zoo", entry.build, entry)
        kwargs = infer_kwargs(arch, sd)
        try:
            ref = entry.build(**kwargs).state_dict()
        except Exception:  # kwargs the entry rejects: not this architecture
            continue
        if ref.keys() == sd.keys() and all(ref[k].shape == sd[k].shape for k in ref):
            return name, kwargs
    return None
