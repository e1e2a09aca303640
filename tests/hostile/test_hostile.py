"""Hostile-input suite (issue 10 §5): one table of cases, each run in-process through the CLI.

Every case asserts the exit code, that no traceback was printed, that an error is exactly
one line on stderr, that no raw escape character reached the output, and that nothing
outside the test's temp dir changed (a canary folder that payloads aim at, the package's
assets, /dev/null). Cases for behaviour the lead is still implementing are marked
``xfail(strict=False, reason="lead: in progress")``; flip them when it lands.

Signal, broken-pipe, file-mode and concurrent-writer cases need real processes: see
``test_hostile_procs.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

torch = pytest.importorskip("torch")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # hostile_files / hostile_factories (imported by name below and by --arch)

import hostile_files as hf  # noqa: E402

LEAD = pytest.mark.xfail(strict=False, reason="lead: in progress")
REPO = HERE.parents[1]


@dataclass
class Ctx:
    """What a case's setup and checks get: the temp dir, the outside canary dir, a valid report."""

    d: Path
    o: Path
    report: dict[str, Any]


@dataclass
class Case:
    id: str
    argv: list[str]
    code: int
    setup: Callable[[Ctx], Any] | None = None
    match: str | None = None          # regex the stderr message must match
    check: Callable[[Ctx, str, str], None] | None = None
    lead: bool = False                 # behaviour the lead is implementing now
    debug: bool = False                # --debug: a traceback on stderr is expected
    marks: list = field(default_factory=list)


CASES: list[Case] = []


def case(id: str, argv: str | list[str], code: int, setup=None, match=None, check=None, lead=False, debug=False) -> None:
    CASES.append(Case(id, argv.split() if isinstance(argv, str) else argv, code, setup, match, check, lead, debug))


# ============================================================================ helpers for setups/checks

def write(rel: str, text: str | bytes) -> Callable[[Ctx], None]:
    def setup(c: Ctx) -> None:
        path = c.d / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return setup


def both(*setups: Callable[[Ctx], Any]) -> Callable[[Ctx], None]:
    def setup(c: Ctx) -> None:
        for s in setups:
            s(c)
    return setup


def ck(**kw: Any) -> Callable[[Ctx], None]:
    return lambda c: hf.checkpoint(c.d, **kw)


def report(mutations: dict[str, Any] | None = None, name: str = "r.json", raw: str | None = None) -> Callable[[Ctx], None]:
    def setup(c: Ctx) -> None:
        if raw is not None:
            (c.d / name).write_text(raw)
            return
        data = c.report
        for path, value in (mutations or {}).items():
            data = hf.mutate(data, path, value)
        (c.d / name).write_text(json.dumps(data))
    return setup


def no_pwned(c: Ctx, out: str, err: str) -> None:
    assert not any(p.name.startswith("pwned") for p in [*c.d.rglob("*"), *c.o.rglob("*")])


def stdout_has(text: str) -> Callable[[Ctx, str, str], None]:
    def check(c: Ctx, out: str, err: str) -> None:
        assert text in out, out
    return check


def file_json(rel: str) -> Callable[[Ctx, str, str], None]:
    def check(c: Ctx, out: str, err: str) -> None:
        json.loads((c.d / rel).read_text())
    return check


def msg_len_below(n: int) -> Callable[[Ctx, str, str], None]:
    def check(c: Ctx, out: str, err: str) -> None:
        assert len(err) < n, len(err)
    return check


SD = "--arch hostile_factories:{f} --input-shape 1,28,28"


def factory_case(id: str, factory: str, code: int, command: str = "info", match: str | None = None,
                 lead: bool = False, extra: str = "", limit: int = 2) -> None:
    argv = f"{command} {{d}}/sd.pt {SD.format(f=factory)} {extra}".split()
    if command != "info":
        argv += ["--limit", str(limit), "-q"]
    case(id, argv, code, setup=lambda c: torch.save(_fine_sd(), c.d / "sd.pt"), match=match, lead=lead)


def _fine_sd() -> dict[str, Any]:
    import hostile_factories

    torch.manual_seed(0)
    return hostile_factories.fine().state_dict()


# ============================================================================ 1. hostile pickles and checkpoints

PAYLOADS = {
    "os_system": (os.system, "touch {o}/pwned"),
    "subprocess_popen": ("subprocess.Popen", ["touch", "{o}/pwned"]),
    "builtins_eval": (eval, "open('{o}/pwned', 'w')"),
    "builtins_exec": (exec, "open('{o}/pwned', 'w')"),
    "os_remove": (os.remove, "{o}/secret.txt"),
    "builtins_open": (open, "{o}/pwned"),
    "shutil_rmtree": ("shutil.rmtree", "{o}"),
}


def _payload(name: str, legacy: bool) -> Callable[[Ctx], None]:
    def setup(c: Ctx) -> None:
        func, arg = PAYLOADS[name]
        if isinstance(func, str):
            import importlib

            mod, _, attr = func.rpartition(".")
            func = getattr(importlib.import_module(mod), attr)
        arg = [a.format(o=c.o) for a in arg] if isinstance(arg, list) else arg.format(o=c.o)
        hf.pickle_payload(c.d, c.o, "evil.pt", func, arg, legacy=legacy)
    return setup


for _name in PAYLOADS:
    for _legacy in (False, True):
        case(f"pickle-{_name}{'-legacy' if _legacy else ''}", "info {d}/evil.pt", 3, _payload(_name, _legacy),
             match=r"global .*--unsafe-load would import and run", check=no_pwned)

case("pickle-full-module", "info {d}/full.pt", 3,
     lambda c: torch.save(__import__("robaudit.models.zoo", fromlist=["LeNet"]).LeNet(), c.d / "full.pt"),
     match=r"robaudit\.models\.zoo\.LeNet.*--unsafe-load")
case("pickle-raw-reduce-not-torch", "info {d}/raw.pt", 3,
     lambda c: hf.raw_pickle(c.d, "raw.pt", hf.Reduce(os.system, f"touch {c.o}/pwned")), check=no_pwned)
case("pickle-debug-same-code", "info {d}/evil.pt --debug", 3, _payload("os_system", False), debug=True, check=no_pwned)

# factories named by a file (§1: only the command line may name package.module:factory)
for _i, _arch in enumerate(("os:system", "subprocess:run", "builtins:exec", "importlib:import_module", " os:system ",
                            "posix:system")):
    case(f"checkpoint-arch-{_i}-{_arch.strip().replace(':', '-')}", "info {d}/ck.pt", 2,
         both(ck(arch=_arch, arch_kwargs={"args": "touch pwned", "shell": True})),
         match=r"names code to import.*command line.*--arch", check=no_pwned)
case("checkpoint-arch-kwargs-names-factory", "info {d}/ck.pt", 2, ck(arch_kwargs={"num_classes": 10, "f": "os:system"}),
     match=r"arch_kwargs\.f.*names code to import.*--arch")
case("checkpoint-arch-kwargs-list-names-factory", "info {d}/ck.pt", 2,
     ck(arch_kwargs={"num_classes": 10, "f": ["x", "subprocess:run"]}), match="names code to import")
case("checkpoint-meta-arch-names-factory", "info {d}/ck.pt", 2, ck(meta={"arch": "subprocess:run"}),
     match=r"meta\.arch.*names code to import")
case("checkpoint-arch-kwargs-nested-dict", "info {d}/ck.pt", 3, ck(arch_kwargs={"num_classes": {"a": 1}}),
     match=r"arch_kwargs\.num_classes")
case("checkpoint-arch-kwargs-not-dict", "info {d}/ck.pt", 3, ck(arch_kwargs=[1, 2]), match="must be a dict")
case("checkpoint-arch-kwargs-huge-classes", "info {d}/ck.pt", 3, ck(arch_kwargs={"num_classes": 10 ** 9}),
     match=r"num_classes=1000000000 .*imply num_classes=10")
case("checkpoint-arch-kwargs-bad-type", "info {d}/ck.pt", 3, ck(arch_kwargs={"num_classes": "ten"}))
case("checkpoint-arch-unknown", "info {d}/ck.pt", 2, ck(arch="no_such_net"), match="not a robaudit zoo name")
case("checkpoint-meta-not-dict", "info {d}/ck.pt", 3, ck(meta=[1, 2]), match="'meta' must be a dict")
case("checkpoint-meta-mean-strings", "info {d}/ck.pt", 3, ck(meta={"mean": "abc", "std": [1.0]}), match="'mean'")
case("checkpoint-meta-mean-nan", "info {d}/ck.pt", 3, ck(meta={"mean": [float("nan")], "std": [1.0]}),
     match="checkpoint meta 'mean' must be finite")
case("checkpoint-meta-std-inf", "info {d}/ck.pt", 3, ck(meta={"mean": [0.5], "std": [float("inf")]}), match="finite")
case("checkpoint-meta-std-zero", "info {d}/ck.pt", 3, ck(meta={"mean": [0.5], "std": [0.0]}),
     match="checkpoint meta 'std' must be positive")
case("checkpoint-meta-std-negative", "info {d}/ck.pt", 3, ck(meta={"mean": [0.5], "std": [-1.0]}), match="checkpoint meta")
case("checkpoint-meta-mean-std-length", "info {d}/ck.pt", 3, ck(meta={"mean": [0.5, 0.5], "std": [1.0]}),
     match="equal length")
case("checkpoint-meta-mean-3ch-on-1ch-blames-meta", "info {d}/ck.pt", 3,
     ck(meta={"mean": [0.5] * 3, "std": [0.2] * 3}), match=r"checkpoint meta 'mean'/'std'")
case("checkpoint-meta-input-shape-huge", "info {d}/ck.pt", 3, ck(meta={"input_shape": [1, 100000, 100000]}),
     match="from checkpoint meta")
case("checkpoint-meta-input-shape-negative", "info {d}/ck.pt", 3, ck(meta={"input_shape": [1, -28, 28]}),
     match="positive")
case("checkpoint-meta-input-shape-string", "info {d}/ck.pt", 3, ck(meta={"input_shape": "1,28,28"}),
     match="list of ints")
case("checkpoint-meta-class-names-not-list", "info {d}/ck.pt", 3, ck(meta={"class_names": "abc"}), match="must be a list")
case("checkpoint-meta-class-names-count", "info {d}/ck.pt", 3, ck(meta={"class_names": ["a", "b"]}),
     match="2 class names but the model outputs 10")
case("checkpoint-meta-class-names-markup", "info {d}/ck.pt", 0,
     ck(meta={"class_names": ["[/bold]", "[red]x", "[link=http://e]y"] + [str(i) for i in range(7)]}),
     check=stdout_has("[/bold]"))
case("checkpoint-meta-class-names-ansi", "info {d}/ck.pt", 0,
     ck(meta={"class_names": ["\x1b[2J\x1b[31mred", "a\rb"] + [str(i) for i in range(8)]}), check=stdout_has("\\x1b"))
case("checkpoint-meta-dataset-markup", "info {d}/ck.pt", 0, ck(meta={"dataset": "[/red][blink]x"}),
     check=stdout_has("[/red][blink]x"))
case("checkpoint-meta-huge-string", "info {d}/ck.pt --json", 0, ck(meta={"note": "x" * 100_000}))
case("checkpoint-zip-bomb-declared", "info {d}/bomb.pt --arch lenet", 3, lambda c: hf.zip_bomb(c.d),
     match="inflate to")
case("checkpoint-zip-bomb-deflated", "info {d}/deflated.pt --arch lenet", 3, lambda c: hf.deflated_bomb(c.d),
     match="inflate to")
case("checkpoint-legacy-huge-storage", "info {d}/legacy_huge.pt --arch lenet", 3, lambda c: hf.legacy_huge_storage(c.d),
     match="declares .* bytes of tensor data")
case("checkpoint-expanded-tensor", "info {d}/expanded.pt --arch lenet", 3, lambda c: hf.expanded_sd(c.d),
     match="more elements than its stored data")
case("checkpoint-truncated", "info {d}/trunc.pt", 3, lambda c: hf.truncated(c.d), match="not a readable PyTorch file")
case("checkpoint-empty-file", "info {d}/empty.pt", 3, write("empty.pt", b""))
case("checkpoint-random-bytes", "info {d}/rand.pt", 3, write("rand.pt", os.urandom(4096)))
case("checkpoint-text-file", "info {d}/text.pt", 3, write("text.pt", "hello, I am not a model\n"))
case("checkpoint-zip-garbage", "info {d}/z.pt", 3, write("z.pt", b"PK\x03\x04" + os.urandom(200)))
case("checkpoint-legacy-with-global", "info {d}/evil.pt", 3, _payload("os_system", True), check=no_pwned)
case("state-dict-needs-arch", "info {d}/sd.pt", 2, lambda c: torch.save(hf.lenet_sd(), c.d / "sd.pt"), match="--arch")
case("state-dict-wrong-arch", "info {d}/sd.pt --arch resnet20", 3, lambda c: torch.save(hf.lenet_sd(), c.d / "sd.pt"),
     match="does not match --arch resnet20")
case("cli-arch-unknown", "info {d}/sd.pt --arch nonet", 2, lambda c: torch.save(hf.lenet_sd(), c.d / "sd.pt"))
case("cli-arch-missing-module", "info {d}/sd.pt --arch no_such_pkg_xyz:build", 2,
     lambda c: torch.save(hf.lenet_sd(), c.d / "sd.pt"), match="cannot import")
case("cli-arch-not-a-module", "info {d}/sd.pt --arch hostile_factories:not_a_module --input-shape 1,28,28", 3,
     lambda c: torch.save(hf.lenet_sd(), c.d / "sd.pt"), match="not an nn.Module")
case("cli-arch-factory-raises", "info {d}/sd.pt --arch hostile_factories:factory_raises --input-shape 1,28,28", 3,
     lambda c: torch.save(hf.lenet_sd(), c.d / "sd.pt"), match="cannot build")
case("model-missing", "info {d}/nope.pt", 2, match="not found")
case("model-is-dir", "info {d}", 2, match="directory")
case("model-is-fifo", "info {d}/fifo.pt", 2, lambda c: os.mkfifo(c.d / "fifo.pt"), match="not a regular file")
case("model-dev-zero", "info /dev/zero", 2, match="not a regular file")
case("model-path-markup", ["info", "{d}/[/bold]x[red].pt"], 2, match=r"\[/bold\]x\[red\]\.pt")
case("model-path-ansi", ["info", "{d}/\x1b[31mevil\x1b[0m.pt"], 2, match=r"\\x1b\[31mevil")
case("model-path-newline", ["info", "{d}/a\nb.pt"], 2)
def _bracket_dir(c: Ctx) -> None:
    """A folder named '[' so that '{d}/[/i]m.pt' is a real path with a closing markup tag in it."""
    (c.d / "[").mkdir()


case("model-path-markup-exists", ["info", "{d}/[/i]m.pt", "--json"], 0,
     both(_bracket_dir, lambda c: hf.checkpoint(c.d / "[", "i]m.pt")), check=stdout_has("[/i]m.pt"))
case("model-path-markup-table", ["info", "{d}/[/i]m.pt"], 0, both(_bracket_dir, lambda c: hf.checkpoint(c.d / "[", "i]m.pt")),
     check=stdout_has("[/i]m.pt"))
case("model-path-emoji-code", ["info", "{d}/:smile:.pt"], 0, lambda c: hf.checkpoint(c.d, ":smile:.pt"),
     check=stdout_has(":smile:.pt"))

# ============================================================================ TorchScript and ONNX

case("torchscript-corrupt", "info {d}/ts.pt", 3,
     lambda c: (c.d / "ts.pt").write_bytes(hf.torchscript(c.d, "good.pt").read_bytes()[:3000]))
case("torchscript-meta-not-json", "info {d}/ts.pt", 3, lambda c: hf.torchscript(c.d, meta="{not json"), match="not valid JSON")
case("torchscript-meta-markup", "info {d}/ts.pt", 0,
     lambda c: hf.torchscript(c.d, meta=json.dumps({"input_shape": [1, 28, 28], "dataset": "[/bold]\x1b[5m"})),
     check=stdout_has("[/bold]\\x1b[5m"))
case("torchscript-meta-nan-std", "info {d}/ts.pt", 3,
     lambda c: hf.torchscript(c.d, meta='{"input_shape": [1, 28, 28], "mean": [0.5], "std": [NaN]}'), match="finite")
case("torchscript-forward-raises", "info {d}/ts.pt --input-shape 1,28,28", 3,
     lambda c: hf.torchscript(c.d, module=hf.RaisingNet()), match="forward pass")

case("onnx-external-traversal", "info {d}/m.onnx", 3,
     lambda c: hf.onnx_model(c.d, external={"location": "../outside_secret.bin"}), match="inside the model's folder")
case("onnx-external-absolute", "info {d}/m.onnx", 3,
     lambda c: hf.onnx_model(c.d, external={"location": str(c.o / "secret.txt")}), match="inside the model's folder")
case("onnx-external-dev-zero", "info {d}/m.onnx", 3, lambda c: hf.onnx_model(c.d, external={"location": "/dev/zero"}))
case("onnx-external-symlink-out", "info {d}/m.onnx", 3,
     lambda c: (os.symlink(c.o / "secret.txt", c.d / "w.bin"), hf.onnx_model(c.d, external={"location": "w.bin"})),
     match="resolves outside")
case("onnx-external-missing", "info {d}/m.onnx", 3, lambda c: hf.onnx_model(c.d, external={"location": "nothere.bin"}),
     match="not a regular file")
case("onnx-external-length-beyond", "info {d}/m.onnx", 3,
     lambda c: hf.onnx_model(c.d, external={"location": "w.bin", "length": str(10 ** 12)}, ext_file=("w.bin", hf.WEIGHT_BYTES)),
     match="lies outside")
case("onnx-external-negative-offset", "info {d}/m.onnx", 3,
     lambda c: hf.onnx_model(c.d, external={"location": "w.bin", "offset": "-5"}, ext_file=("w.bin", hf.WEIGHT_BYTES)))
case("onnx-external-fifo", "info {d}/m.onnx", 3,
     lambda c: (os.mkfifo(c.d / "w.bin"), hf.onnx_model(c.d, external={"location": "w.bin"})), match="not a regular file")
case("onnx-external-ok", "info {d}/m.onnx", 0,
     lambda c: hf.onnx_model(c.d, external={"location": "w.bin"}, ext_file=("w.bin", hf.WEIGHT_BYTES)))
case("onnx-garbage", "info {d}/m.onnx", 3, write("m.onnx", os.urandom(300)))
case("onnx-empty-graph", "info {d}/m.onnx", 3, lambda c: hf.onnx_model(c.d, nodes=False))
case("onnx-unsupported-op", "info {d}/m.onnx", 3, lambda c: hf.onnx_model(c.d, op="NoSuchOp"))

# ============================================================================ configs

_SHELL_CK = ck(arch="lenet", arch_kwargs={"args": "touch pwned", "shell": True})
case("config-auto-subprocess-run-plus-checkpoint", "info {d}/ck.pt", 2,
     both(write("robaudit.yaml", 'arch: "subprocess:run"\n'),
          ck(arch="subprocess:run", arch_kwargs={"args": "touch pwned", "shell": True})),
     match=r"robaudit\.yaml: arch .*command line.*--arch", check=no_pwned)
case("config-auto-os-system", "info", 2, write("robaudit.yaml", "arch: os:system\n"), match="--arch")
case("config-explicit-builtins-exec", "info -c {d}/c.yaml", 2, write("c.yaml", "arch: 'builtins:exec'\n"))
case("config-arch-factory-with-spaces", "info -c {d}/c.yaml", 2, write("c.yaml", "arch: '  os:system  '\n"))
case("config-arch-zoo-ok", "info -c {d}/c.yaml {d}/sd.pt", 0,
     both(write("c.yaml", "arch: lenet\n"), lambda c: torch.save(hf.lenet_sd(), c.d / "sd.pt")))
case("config-billion-laughs", "info -c {d}/c.yaml", 2, write("c.yaml", "".join(
    [f'{k}: &{k} [{", ".join(["*" + p] * 9 if p else ["lol"] * 9)}]\n'
     for k, p in zip("abcdefghi", ["", *"abcdefgh"])]) + "model: *i\n"), match="aliases|expands to more than",
     check=msg_len_below(500))
case("config-recursive-alias", "info -c {d}/c.yaml", 2, write("c.yaml", "a: &a [*a]\n"))
case("config-too-many-aliases", "info -c {d}/c.yaml", 2,
     write("c.yaml", "x: &x 1\nl: [" + ", ".join(["*x"] * 100) + "]\n"), match="aliases")
case("config-deep-nesting", "info -c {d}/c.yaml", 2, write("c.yaml", "a: " + hf.nested(5000) + "\n"))
case("config-too-big", "info -c {d}/c.yaml", 2, write("c.yaml", "# " + "x" * (2 << 20) + "\n"), match="at most")
case("config-not-utf8", "info -c {d}/c.yaml", 2, write("c.yaml", b"model: \xff\xfe\n"), match="UTF-8")
case("config-python-object-tag", "info -c {d}/c.yaml", 2,
     write("c.yaml", "model: !!python/object/apply:os.system ['touch pwned']\n"), check=no_pwned)
case("config-python-name-tag", "info -c {d}/c.yaml", 2, write("c.yaml", "model: !!python/name:os.system\n"))
case("config-top-level-list", "info -c {d}/c.yaml", 2, write("c.yaml", "- a\n- b\n"), match="mapping")
case("config-unknown-key", "info -c {d}/c.yaml", 2, write("c.yaml", "modle: x.pt\n"), match="did you mean 'model'")
case("config-unknown-key-markup", "info -c {d}/c.yaml", 2, write("c.yaml", "'[/bold]': 1\n"), match=r"\[/bold\]")
case("config-unknown-key-ansi", "info -c {d}/c.yaml", 2, write("c.yaml", '"\\e[31mkey": 1\n'), match=r"\\x1b")
case("config-unknown-key-huge", "info -c {d}/c.yaml", 2, write("c.yaml", "k" * 100_000 + ": 1\n"),
     check=msg_len_below(2500))
case("config-setting-mapping", "info -c {d}/c.yaml", 2, write("c.yaml", "limit: {a: 1}\n"), match="single value")
case("config-setting-nested-list", "info -c {d}/c.yaml", 2, write("c.yaml", "mean: [[1, 2]]\n"))
case("config-long-value-echo", "norms -c {d}/c.yaml", 2, write("c.yaml", "limit: " + "9x" * 300_000 + "\n"),
     check=msg_len_below(2500))
case("config-analyses-not-mapping", "norms -c {d}/c.yaml", 2, write("c.yaml", "analyses: [norms]\n"))
case("config-analysis-options-list", "norms -c {d}/c.yaml", 2, write("c.yaml", "analyses:\n  norms: [1]\n"))
case("config-unknown-analysis", "norms -c {d}/c.yaml", 2, write("c.yaml", "analyses:\n  nroms: {}\n"))
case("config-gate-not-mapping", "norms -c {d}/c.yaml", 2, write("c.yaml", "gate: [1]\n"))
case("config-gate-bad-number", "norms -c {d}/c.yaml", 2, write("c.yaml", "gate:\n  fail_above: {x: abc}\n"))
case("config-profile-list", "audit -c {d}/c.yaml", 2, write("c.yaml", "profile: [quick]\n"))
case("config-is-dir", "info -c {d}", 2, match="not a regular file")
case("config-missing", "info -c {d}/nope.yaml", 2, match="no such file")
case("config-fifo", "info -c {d}/c.yaml", 2, lambda c: os.mkfifo(c.d / "c.yaml"), match="not a regular file")
case("config-tabs-invalid-yaml", "info -c {d}/c.yaml", 2, write("c.yaml", "a:\n\t- b\n"), match="not valid YAML")
case("config-empty", "info -c {d}/c.yaml -q", 0, write("c.yaml", ""))
case("config-model-relative", "info -c {d}/sub/c.yaml -q", 0,
     both(write("sub/c.yaml", "model: ck.pt\n"), lambda c: hf.checkpoint(c.d / "sub", "ck.pt")))
case("config-mean-nan", "info -c {d}/c.yaml", 2, write("c.yaml", "mean: [.nan]\nstd: [1]\n"))
case("config-std-names-config-key", "info -c {d}/c.yaml", 2, write("c.yaml", "mean: [0.5]\nstd: [-1]\n"),
     match=r"c\.yaml: std")
case("config-no-unsafe-load-key", "info -c {d}/c.yaml", 2, write("c.yaml", "unsafe_load: true\n"), match="unknown key")

# ============================================================================ data

N2 = "--limit 2 -q"
case("indices-huge-range", f"norms --indices 0:200000000 {N2}", 2, match="out of range")
case("indices-beyond", f"norms --indices 5000 {N2}", 2, match="5000 is out of range")
case("indices-second-range-beyond", f"norms --indices 0:10,999999999 {N2}", 2, match="999999999")
case("indices-negative", ["norms", "--indices=-1", *N2.split()], 2)
case("indices-text", f"norms --indices abc {N2}", 2)
case("indices-empty-range", f"norms --indices 5:2 {N2}", 2)
case("indices-empty", ["norms", "--indices", "", *N2.split()], 2)
case("indices-too-many-items", ["norms", "--indices", ",".join(map(str, range(20000))), *N2.split()], 2)
case("indices-ok", f"norms --indices 3,1:3 {N2}", 0)
case("data-labels-out-of-range", f"norms --data {{d}}/data.npz {N2}", 3,
     lambda c: hf.npz(c.d, y=[10, 1, 2, 3]), match="label 10 .*10-class model")
case("data-labels-out-of-range-layers", "layers --data {d}/data.npz -q", 3,
     lambda c: hf.npz(c.d, y=[10, 1, 2, 3]), match="label 10")
case("data-labels-out-of-range-spectrum", f"spectrum --data {{d}}/data.npz {N2}", 3,
     lambda c: hf.npz(c.d, y=[10, 1, 2, 3]), match="label 10")
case("data-labels-negative", f"norms --data {{d}}/data.npz {N2}", 3, lambda c: hf.npz(c.d, y=[0, -5, 1, 3]),
     match=">= 0|negative")
case("data-labels-float", f"norms --data {{d}}/data.npz {N2}", 3, lambda c: hf.npz(c.d, y=[0.5, 1, 2, 3]),
     match="integers")
case("data-more-classes-than-model", f"norms --data {{d}}/data.npz {N2}", 3,
     lambda c: hf.npz(c.d, class_names=[f"c{i}" for i in range(100)]), match="100 classes")
case("data-float-pixels-255", f"norms --data {{d}}/data.npz {N2}", 3,
     lambda c: hf.npz(c.d, x=torch.full((4, 1, 28, 28), 255.0).numpy()), match=r"\[0,1\]")
case("data-nan-pixels", f"norms --data {{d}}/data.npz {N2}", 3,
     lambda c: hf.npz(c.d, x=torch.full((4, 1, 28, 28), float("nan")).numpy()), match="NaN")
case("data-wrong-shape", f"norms --data {{d}}/data.npz {N2}", 3,
     lambda c: hf.npz(c.d, x=torch.zeros(4, 3, 32, 32, dtype=torch.uint8).numpy()))
case("data-label-count", f"norms --data {{d}}/data.npz {N2}", 3, lambda c: hf.npz(c.d, y=[0, 1]))
case("data-npz-no-labels", f"norms --data {{d}}/data.npz {N2}", 3,
     lambda c: __import__("numpy").savez(c.d / "data.npz", x=hf.np.zeros((2, 1, 28, 28), dtype="uint8")))
case("data-npz-object-array", f"norms --data {{d}}/data.npz {N2}", 3,
     lambda c: hf.np.savez(c.d / "data.npz", x=hf.np.array([hf.Reduce(os.system, "touch pwned")], dtype=object),
                           y=hf.np.zeros(1, dtype="int64")), check=no_pwned)
case("data-pt-with-global", f"norms --data {{d}}/data.pt {N2}", 3,
     lambda c: torch.save({"x": hf.Reduce(os.system, f"touch {c.o}/pwned")}, c.d / "data.pt"), check=no_pwned)
case("data-pt-zip-bomb", f"norms --data {{d}}/bomb.pt {N2}", 3, lambda c: hf.zip_bomb(c.d), match="inflate")
case("data-missing-path", f"norms --data {{d}}/nope.npz {N2}", 2)
case("data-empty-dir", f"norms --data {{d}}/empty {N2}", 3, lambda c: (c.d / "empty").mkdir())
case("data-fifo", f"norms --data {{d}}/data.npz {N2}", 2, lambda c: os.mkfifo(c.d / "data.npz"))
case("data-fifo-no-suffix", f"norms --data {{d}}/pipe {N2}", 2, lambda c: os.mkfifo(c.d / "pipe"), match="not a regular file")
case("data-mnist-no-root", f"norms --data mnist {N2}", 2, match="--data-root")
case("data-mnist-root-missing", f"norms --data mnist --data-root {{d}}/nope {N2}", 2)
case("data-mnist-plain-layout-gz", f"norms --data mnist --data-root {{d}}/plain {N2}", 0,
     lambda c: hf.idx_files(c.d / "plain"))
case("data-mnist-plain-layout-raw", f"norms --data kmnist --data-root {{d}}/plain {N2}", 0,
     lambda c: hf.idx_files(c.d / "plain", gz=False))
case("data-mnist-empty-root-lists-names", f"norms --data mnist --data-root {{d}}/plain {N2}", 3,
     lambda c: (c.d / "plain").mkdir(), match=r"t10k-images-idx3-ubyte\[\.gz\], t10k-labels-idx1-ubyte")
case("data-idx-truncated", f"norms --data mnist --data-root {{d}}/plain {N2}", 3,
     lambda c: hf.idx_files(c.d / "plain", corrupt="truncated"), match="truncated")
case("data-idx-bad-magic", f"norms --data mnist --data-root {{d}}/plain {N2}", 3,
     lambda c: hf.idx_files(c.d / "plain", corrupt="magic"), match="magic")
case("data-image-folder-bad-png", f"norms --data {{d}}/imgs {N2}", 3, lambda c: hf.image_folder(c.d, bad=True))
case("data-path-markup", ["norms", "--data", "{d}/[/bold].npz", *N2.split()], 2, match=r"\[/bold\]")
case("data-unknown-name", f"norms --data cifar11 {N2}", 2, match="did you mean")
case("limit-zero", "norms --limit 0 -q", 2)
case("limit-negative", ["norms", "--limit=-3", "-q"], 2)
case("limit-text", "norms --limit abc -q", 2)
case("split-unknown", f"norms --split validation {N2}", 2)
case("batch-size-zero", f"norms --batch-size 0 {N2}", 2)

# ============================================================================ misbehaving models

factory_case("model-forward-raises", "raises", 3, match="boom in forward")
factory_case("model-forward-raises-markup", "raises_markup", 3, match=r"\[/bold\]")
factory_case("model-forward-raises-bad-str", "raises_bad_str", 3)
factory_case("model-forward-recursion", "recurses", 3)
factory_case("model-returns-tuple", "returns_tuple", 3, match="--select")
factory_case("model-returns-dict-bad-select", "returns_dict", 3, match="--select", extra="--select nokey")
factory_case("model-returns-dict-select-ok", "returns_dict", 0, extra="--select logits")
factory_case("model-returns-flat", "returns_flat", 3, match=r"\(N, C\)")
factory_case("model-returns-argmax", "argmax", 3)
factory_case("model-calls-sys-exit-0", "exits", 3, match="sys.exit")
factory_case("model-calls-sys-exit-1", "exits_one", 3, match="sys.exit")
factory_case("model-fine-info", "fine", 0)
factory_case("model-fine-norms", "fine", 0, command="norms")
factory_case("model-one-hot-argmax-norms", "one_hot_argmax", 3, command="norms", match="differentiable|gradient")
factory_case("model-detached-norms", "detached", 3, command="norms", match="differentiable|gradient")
factory_case("model-no-grad-norms", "no_grad", 3, command="norms", match="differentiable|gradient")
factory_case("model-rounded-norms", "rounded", 3, command="norms", match="differentiable|gradient")
factory_case("model-nan-logits-norms", "nan_logits", 3, command="norms", match="NaN|non-finite")
factory_case("model-inf-logits-norms", "inf_logits", 3, command="norms", match="Inf|non-finite")
factory_case("model-raises-on-data-batches", "raises_later", 3, command="norms", limit=3, match="fails on real batches")
factory_case("model-select-on-tensor-output", "fine", 2, extra="--select 0", match="nothing to select")

# ============================================================================ bad options

case("mean-without-std", "info --mean 0.5", 2, match="go together")
case("std-zero", "info --mean 0.5 --std 0", 2, match="--std")
case("std-negative", "info --mean 0.5 --std=-1", 2, match="--std")
case("mean-text", "info --mean abc --std 1", 2, match="--mean")
case("mean-nan", "info --mean nan --std 1", 2)
case("mean-inf", "info --mean inf --std 1", 2)
case("std-nan", "info --mean 0.5 --std nan", 2)
case("mean-channels-mismatch-blames-flags", "info --mean 0.1,0.2,0.3 --std 1,1,1", 2, match="--mean/--std")
case("input-shape-zero", "info --input-shape 0,28,28", 2)
case("input-shape-text", "info --input-shape abc", 2)
case("input-shape-huge", "info {d}/sd.pt --arch lenet --input-shape 1,100000,100000", 2,
     lambda c: torch.save(hf.lenet_sd(), c.d / "sd.pt"), match="--input-shape")
case("device-unknown", "info --device quantum", 2)
case("dtype-unknown", f"norms --dtype float16 {N2}", 2)
case("seed-text", f"norms --seed abc {N2}", 2)
case("unknown-flag", "info --bogus", 2, match="No such option")
case("unknown-command", "frobnicate", 2)
case("unknown-profile", "audit --profile turbo -q", 2)
case("unknown-analysis", "audit -a nosuch -q", 2)
case("debug-unknown-flag-same-code", "info --bogus --debug", 2, debug=True)
case("debug-missing-model-same-code", "info {d}/nope.pt --debug", 2, debug=True)
case("debug-unknown-analysis-same-code", "audit -a nosuch --debug -q", 2, debug=True)
case("tol-nan", f"norms --tol nan {N2}", 2)
case("audit-analyses-comma", "audit -a , -q", 2)
case("audit-output-empty", ["audit", "-a", "norms", "-o", "", *N2.split()], 2)
case("info-output-empty", ["info", "-o", ""], 2, match="empty")
case("norms-output-dir-missing-before-compute", f"norms -o {{d}}/nodir/r.json {N2}", 2, match="does not exist")
case("fail-on-regression-nan", "compare {d}/r.json {d}/r.json --fail-on-regression nan", 2, report())
case("fail-on-regression-negative", "compare {d}/r.json {d}/r.json --fail-on-regression=-1", 2, report())

# ============================================================================ bad reports (show / gate / compare)

for _cmd in ("show", "gate", "compare"):
    _argv = {"show": "show {d}/r.json", "gate": "gate {d}/r.json --fail-above norms.spectral.max=1",
             "compare": "compare {d}/r.json {d}/r.json"}[_cmd]
    case(f"{_cmd}-not-json", _argv, 2, report(raw="{not json"), match="not a robaudit report")
    case(f"{_cmd}-json-list", _argv, 2, report(raw="[1, 2]"), match="not a robaudit report")
    case(f"{_cmd}-schema-version-string", _argv, 2, report({"schema_version": "1"}), match="schema_version")
    case(f"{_cmd}-schema-version-bool", _argv, 2, report({"schema_version": True}), match="schema_version")
    case(f"{_cmd}-schema-version-newer", _argv, 2, report({"schema_version": 99}), match="upgrade robaudit")
    case(f"{_cmd}-schema-version-missing", _argv, 2, report({"schema_version": hf.DELETE}), match="schema_version")
    case(f"{_cmd}-analyses-list", _argv, 2, report({"analyses": [1]}), match="analyses")
    case(f"{_cmd}-deep-nesting", _argv, 2, report(raw='{"schema_version": 1, "x": ' + hf.nested(100_000) + "}"),
         match="not a robaudit report")
    case(f"{_cmd}-empty-file", _argv, 2, report(raw=""), match="not a robaudit report")
    case(f"{_cmd}-missing-file", _argv.replace("r.json", "nope.json", 1), 2)

case("report-num-classes-string", "show {d}/r.json", 2, report({"model.num_classes": "ten"}), match="model.num_classes")
case("report-stats-list-for-number", "gate {d}/r.json --fail-above norms.spectral.max=1", 2,
     report({"analyses.norms.summary.spectral.max": [1, 2]}), match="spectral.max")
case("report-nested-40", "show {d}/r.json", 2, report({"environment.extra": json.loads(hf.nested(40))}),
     match="nested")
case("report-binary", "show {d}/r.json", 2, write("r.json", os.urandom(500)), match="not a robaudit report")
case("report-not-utf8", "show {d}/r.json", 2, write("r.json", b'{"a": "\xff"}'), match="UTF-8")
case("report-is-dir", "show {d}", 2)
case("report-fifo", "show {d}/r.json", 2, lambda c: os.mkfifo(c.d / "r.json"), match="not a regular file")
case("report-timings-list", "show {d}/r.json", 2, report({"timings.total": [1]}), match="timings.total")
case("report-gate-passed-string", "show {d}/r.json", 2,
     report({"gate": {"passed": "yes", "checks": []}}), match="gate.passed")
case("show-ansi-in-path", "show {d}/r.json", 0, report({"model.path": "\x1b]0;title\x07\x1b[2Jevil.pt"}),
     check=stdout_has("\\x1b"))
case("show-markup-in-path", "show {d}/r.json", 0, report({"model.path": "[/bold][link=x]evil.pt"}),
     check=stdout_has("[/bold]"))  # renderers (report/terminal.py) print user text as Text, not markup
case("show-ansi-in-warning", "show {d}/r.json", 0, report({"warnings": ["\x1b[31mred\x1b[0m [/bold]"]}))
case("show-markup-in-data-name", "show {d}/r.json", 0, report({"data.name": "[/red]x"}), check=stdout_has("[/red]x"))
case("show-bidi-override", "show {d}/r.json", 0, report({"model.path": "abc\u202edcba.pt"}), check=stdout_has("\\u202e"))
case("show-markdown-ansi", "show {d}/r.json --markdown", 0, report({"model.path": "\x1b[2Jx.pt"}))
case("gate-markup-metric", ["gate", "{d}/r.json", "--fail-above", "[/bold]=1"], 2, report())
case("gate-bad-threshold", "gate {d}/r.json --fail-above norms.spectral.max", 2, report())
case("gate-no-thresholds", "gate {d}/r.json", 2, report(), match="no thresholds")
case("gate-passes", "gate {d}/r.json --fail-above norms.spectral.max=1e9", 0, report())
case("gate-fails", "gate {d}/r.json --fail-above norms.spectral.max=1e-9", 1, report())
case("gate-incomplete-fails", "gate {d}/r.json --fail-above norms.spectral.max=1e9", 1,
     report({"complete": False}))
case("gate-incomplete-allowed", "gate {d}/r.json --fail-above norms.spectral.max=1e9 --allow-incomplete", 0,
     report({"complete": False}))
case("gate-nan-metric-fails", "gate {d}/r.json --fail-above norms.spectral.max=1e9", 1,
     report({"analyses.norms.summary.spectral.max": float("nan")}))
case("compare-b-invalid", "compare {d}/r.json {d}/b.json", 2, both(report(), report(raw="[]", name="b.json")))
case("compare-nan-in-b-regression", "compare {d}/r.json {d}/b.json --fail-on-regression 1", 1,
     both(report(), report({"analyses.norms.summary.spectral.max": float("nan")}, name="b.json")))
case("compare-missing-in-b-regression", "compare {d}/r.json {d}/b.json --fail-on-regression 1", 1,
     both(report(), report({"analyses.norms.summary.spectral.max": None}, name="b.json")))
case("compare-same-ok", "compare {d}/r.json {d}/r.json --fail-on-regression 1", 0, report())

# ============================================================================ faults: output paths

case("output-missing-dir", "info -o {d}/nodir/x.json", 2, match="does not exist")
case("output-is-dir", "info -o {d}", 2, match="is a directory")
case("output-dev-null", "info -o /dev/null -q", 0,
     check=lambda c, out, err: stat.S_ISCHR(os.stat("/dev/null").st_mode) or pytest.fail("/dev/null replaced"))
case("output-dev-full", "info -o /dev/full -q", 3, match="No space left")
case("output-symlink-target-written", "info -o {d}/link.json -q", 0,
     lambda c: ((c.d / "target.json").write_text("old"), os.symlink(c.d / "target.json", c.d / "link.json")),
     check=lambda c, out, err: _symlink_ok(c))
case("output-dangling-symlink", "info -o {d}/dangling.json -q", 0,
     lambda c: os.symlink(c.d / "made.json", c.d / "dangling.json"),
     check=lambda c, out, err: json.loads((c.d / "made.json").read_text()) and os.path.islink(c.d / "dangling.json"))
case("output-fifo-no-reader", "info -o {d}/fifo -q", 2, lambda c: os.mkfifo(c.d / "fifo"), match="no reader")
case("output-fifo-with-reader", "info -o {d}/fifo -q", 0, lambda c: _fifo_reader(c.d / "fifo"),
     check=lambda c, out, err: _fifo_read_ok(c))
case("output-markup-name", ["info", "-o", "{d}/[/bold]x.json", "-q"], 0, _bracket_dir, check=file_json("[/bold]x.json"))
case("output-keeps-existing-mode", "info -o {d}/x.json -q", 0,
     lambda c: ((c.d / "x.json").write_text("old"), os.chmod(c.d / "x.json", 0o600)),
     check=lambda c, out, err: stat.S_IMODE(os.stat(c.d / "x.json").st_mode) == 0o600 or pytest.fail("mode changed"))
case("output-proc-file", "info -o /proc/version -q", 2)
case("markdown-missing-dir", f"norms --markdown {{d}}/nodir/x.md {N2}", 2)
case("output-report-roundtrip-validates", f"norms -o {{d}}/n.json {N2}", 0,
     check=lambda c, out, err: __import__("robaudit.report.io", fromlist=["read_report"]).read_report(str(c.d / "n.json")))


def _symlink_ok(c: Ctx) -> None:
    assert os.path.islink(c.d / "link.json"), "the link was replaced"
    json.loads((c.d / "target.json").read_text())


_READERS: dict[str, Any] = {}


def _fifo_reader(path: Path) -> None:
    os.mkfifo(path)
    got: dict[str, bytes] = {}

    def read() -> None:
        with open(path, "rb") as fh:
            got["data"] = fh.read()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    _READERS[str(path)] = (thread, got)
    # the reader must have the FIFO open before robaudit writes: wait until it blocks in open()
    import time

    time.sleep(0.05)


def _fifo_read_ok(c: Ctx) -> None:
    thread, got = _READERS.pop(str(c.d / "fifo"))
    thread.join(5)
    json.loads(got["data"])


# ============================================================================ the runner

@pytest.fixture(scope="session")
def outside(tmp_path_factory) -> Path:
    o = tmp_path_factory.mktemp("outside")
    (o / "secret.txt").write_text("canary\n")
    (o / "sub").mkdir()
    (o / "sub" / "keep.bin").write_bytes(b"\x00" * 64)
    return o


@pytest.fixture(scope="session")
def base_report(tmp_path_factory) -> dict[str, Any]:
    from robaudit.cli.app import run

    path = tmp_path_factory.mktemp("base") / "r.json"
    assert run(["norms", "--limit", "2", "-q", "-o", str(path)]) == 0
    return json.loads(path.read_text())


def _snapshot(*roots: Path) -> dict[str, tuple]:
    state: dict[str, tuple] = {}
    for root in roots:
        for path in [root, *root.rglob("*")]:
            st = os.lstat(path)
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) and st.st_size < 1 << 20 else ""
            state[str(path)] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns, digest)
    state["/dev/null"] = (stat.S_IFMT(os.stat("/dev/null").st_mode),)
    return state


# Files outside the temp dir that a hostile input might aim at and that nobody else edits while
# the suite runs (other folders of the repo may legitimately change under concurrent work).
WATCHED = [REPO / "robaudit" / "assets"]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[LEAD] if c.lead else []) for c in CASES])
def test_hostile(case: Case, tmp_path: Path, outside: Path, base_report: dict[str, Any], monkeypatch, capsys) -> None:
    from robaudit.cli.app import run

    d = tmp_path / "work"
    d.mkdir()
    monkeypatch.chdir(d)
    monkeypatch.setenv("HOME", str(d))
    monkeypatch.delenv("ROBAUDIT_DATA_ROOT", raising=False)
    monkeypatch.delenv("ROBAUDIT_DEBUG", raising=False)
    monkeypatch.syspath_prepend(str(HERE))
    c = Ctx(d, outside, base_report)
    if case.setup is not None:
        case.setup(c)
    before = _snapshot(outside, *[w for w in WATCHED if w.exists()])
    argv = [a.replace("{d}", str(d)).replace("{o}", str(outside)) for a in case.argv]
    capsys.readouterr()

    code = run(argv)

    out, err = capsys.readouterr()
    shown = f"\n--- stdout ---\n{out[-3000:]}\n--- stderr ---\n{err[-3000:]}"
    assert code == case.code, f"exit {code}, expected {case.code}{shown}"
    if not case.debug:
        assert "Traceback" not in out + err, shown
    assert "\x1b" not in out + err, f"a raw escape character reached the terminal{shown}"
    if code in (2, 3, 130):
        lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning:")]
        errors = [ln for ln in lines if ln.startswith("error:")]
        assert len(errors) == 1, f"expected one error line{shown}"
        if not case.debug:
            assert len(lines) == 1, f"expected a one-line message{shown}"
        if case.match:
            assert re.search(case.match, errors[0]), f"message does not match {case.match!r}{shown}"
        assert len(errors[0]) < 2500, "message too long"
    elif case.match:
        assert re.search(case.match, err), shown
    if case.check is not None:
        case.check(c, out, err)
    after = _snapshot(outside, *[w for w in WATCHED if w.exists()])
    assert after == before, f"something outside the test's temp dir changed: {set(after.items()) ^ set(before.items())}"
    no_pwned(c, out, err)


def test_case_count() -> None:
    """The issue asks for at least 150 cases (plus the process-level ones in test_hostile_procs.py)."""
    assert len(CASES) >= 150, len(CASES)
    assert len({c.id for c in CASES}) == len(CASES), "duplicate case ids"
