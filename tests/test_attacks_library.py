"""robaudit.attacks.library: torchattacks classes without importing the whole package (and scipy)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _fresh(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_one_attack_loads_only_its_module() -> None:
    out = _fresh("""
        import sys
        from robaudit.attacks.library import attack_class
        cls = attack_class("PGD")
        print(cls.__module__, "scipy" in sys.modules, "torchattacks.attacks.tifgsm" in sys.modules)
    """)
    assert out.split() == ["torchattacks.attacks.pgd", "False", "False"]


def test_every_class_is_the_packages_own_and_the_package_still_completes() -> None:
    """Each name maps to the very class the full package exports; a later ``import torchattacks``
    (a user of the Python API) gets the whole package, attacks robaudit never loads included."""
    out = _fresh("""
        from robaudit.attacks.library import MODULES, attack_class
        mine = {name: attack_class(name) for name in MODULES}
        import torchattacks
        same = all(getattr(torchattacks, name) is cls for name, cls in mine.items())
        print(same, torchattacks.TIFGSM.__name__, torchattacks.__version__ != "", "__getattr__" in vars(torchattacks))
    """)
    assert out.split() == ["True", "TIFGSM", "True", "False"]


def test_an_already_imported_package_is_used_as_is() -> None:
    out = _fresh("""
        import torchattacks
        from robaudit.attacks.library import attack_class
        print(attack_class("CW") is torchattacks.CW)
    """)
    assert out.strip() == "True"
