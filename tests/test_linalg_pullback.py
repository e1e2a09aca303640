"""linalg.products.pullback: grad_outputs semantics (the cotangent is a constant), with and without its history."""

from __future__ import annotations

import subprocess
import sys

import torch

from robaudit.linalg.products import pullback

F64 = torch.float64


def test_constant_cotangent_gives_the_same_bits_as_grad_outputs() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    x = torch.rand(4, 7, dtype=F64, requires_grad=True)
    u = torch.randn(4, 3, dtype=F64)
    out = net(x)
    (ref,) = torch.autograd.grad(out, x, grad_outputs=u, retain_graph=True)
    (got,) = pullback(out, x, u, retain_graph=True)
    assert torch.equal(got, ref)
    dense = torch.autograd.functional.jacobian(lambda z: net(z), x.detach())  # (4, 3, 4, 7)
    truth = torch.einsum("bc,bcd->bd", u, dense[torch.arange(4), :, torch.arange(4)])
    torch.testing.assert_close(got, truth, rtol=1e-12, atol=1e-14)


def test_cotangent_with_history_is_held_constant() -> None:
    """u = u(x): the pullback is J(x)ᵀu, not ∇ₓ⟨f(x), u(x)⟩ (which would add (∂u/∂x)ᵀf)."""
    x = torch.tensor([[0.3, -1.2]], dtype=F64, requires_grad=True)
    out = x.sin()
    u = (2 * x).exp()  # depends on x
    (got,) = pullback(out, x, u, create_graph=True)
    torch.testing.assert_close(got, x.cos() * u, rtol=1e-15, atol=0)


def test_no_sympy_for_a_constant_cotangent() -> None:
    """torch imports sympy (0.8 s) the first time grad_outputs gets a tensor; pullback does not go there."""
    code = ("import sys, torch\nfrom robaudit.linalg.products import pullback\n"
            "x = torch.rand(3, 4, requires_grad=True)\npullback(torch.tanh(x), x, torch.ones(3, 4))\n"
            "print('sympy' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
