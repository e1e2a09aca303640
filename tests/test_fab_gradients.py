"""robaudit's FAB linearisation (issue 16): the same numbers as torchattacks', without importing sympy."""

from __future__ import annotations

import subprocess
import sys

import torch

from robaudit.attacks import registry
from robaudit.attacks.library import attack_class


def _sample(n: int = 12):
    from robaudit.data import load_data
    from robaudit.models import load_model

    model = load_model(None, device="cpu").module.eval()
    data = load_data(None, limit=n)
    return model, data.images(slice(0, n)), data.y[:n].long()


def test_class_gradients_are_torchattacks_own_bit_for_bit():
    model, x, y = _sample()
    fab = attack_class("FAB")(model, norm="L2", eps=1.0, steps=3, n_classes=10)
    ref_df, ref_dg = fab.get_diff_logits_grads_batch(x, y)  # torchattacks' method (the class's)
    df, dg = registry._fab_class_gradients(fab, x, y)
    assert torch.equal(df, ref_df) and torch.equal(dg, ref_dg)
    # and the values mean what they say: dg[i, c] = ∇f_c − ∇f_label at x_i, against the full Jacobian
    i = 3
    jac = torch.autograd.functional.jacobian(lambda z: model(z)[0], x[i:i + 1])[:, 0]  # (classes, *input)
    with torch.no_grad():
        f = model(x[i:i + 1])[0]
    assert torch.allclose(dg[i], jac - jac[y[i]], rtol=1e-5, atol=1e-6)
    assert torch.allclose(df[i][torch.arange(10) != y[i]], (f - f[y[i]])[torch.arange(10) != y[i]])


def test_a_fab_attack_built_by_robaudit_uses_them_and_imports_no_sympy():
    code = (
        "import sys, torch\n"
        "from robaudit.models import load_model\n"
        "from robaudit.data import load_data\n"
        "from robaudit.attacks.run import attack_batch\n"
        "m = load_model(None, device='cpu').module.eval()\n"
        "d = load_data(None, limit=8)\n"
        "x, y = d.images(slice(0, 8)), d.y[:8].long()\n"
        "adv, check = attack_batch(m, x, y, 'fab', norm='l2', eps=2.0, steps=5, keys=torch.arange(8))\n"
        "assert bool(check.misclassified.any())\n"
        "print('sympy' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
