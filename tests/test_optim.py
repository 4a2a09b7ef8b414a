"""Optimizers: Keras's RMSprop, checked against Keras's update rule computed by hand."""

from __future__ import annotations

import numpy as np
import torch

from digitlab.config import RECIPES, TrainConfig
from digitlab.optim import KerasRMSprop, make_optimizer


def keras_rmsprop_steps(w, grads, lr=1e-3, rho=0.9, eps=1e-7, weight_decay=0.0):
    """Keras 3's RMSprop.update_step (keras/src/optimizers/rmsprop.py, not centered, no momentum), in NumPy
    float64: v = rho*v + (1-rho)*g^2; w -= lr*g / sqrt(v + eps). Keras's weight_decay is decoupled; ours is
    L2, added to the gradient as PyTorch's RMSprop does."""
    w, v = w.astype(np.float64), np.zeros_like(w, dtype=np.float64)
    for g in grads:
        g = g + weight_decay * w
        v = rho * v + (1 - rho) * g**2
        w = w - lr * g / np.sqrt(v + eps)
    return w, v


def run_torch(w0, grads, **kw):
    p = torch.nn.Parameter(torch.tensor(w0))
    opt = KerasRMSprop([p], **kw)
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
    return p.detach().numpy(), opt.state[p]["square_avg"].numpy()


def test_one_step_against_keras_by_hand():
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(4, 3)).astype(np.float32)
    g = rng.normal(size=(4, 3)).astype(np.float32)
    g[0, 0] = 1e-6  # a tiny gradient, where Keras's eps (inside the sqrt) and PyTorch's (outside) differ most
    w, v = run_torch(w0, [g])
    w_ref, v_ref = keras_rmsprop_steps(w0, [g])
    np.testing.assert_allclose(v, v_ref, rtol=1e-6)
    np.testing.assert_allclose(w, w_ref, rtol=1e-6, atol=1e-9)
    # The first step of plain RMSprop moves each weight by about lr*g/sqrt(0.1*g^2) = lr*sqrt(10):
    assert np.allclose(np.abs(w0 - w)[1:], 1e-3 * np.sqrt(10), rtol=1e-3)
    # ...but not one with a gradient near 0: lr*g/sqrt(1e-13 + eps) = 3e-6 (PyTorch's RMSprop: 2.4e-3).
    assert abs(w0[0, 0] - w[0, 0]) < 1e-5


def test_several_steps_with_weight_decay():
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(5,)).astype(np.float32)
    grads = [rng.normal(size=(5,)).astype(np.float32) for _ in range(4)]
    w, v = run_torch(w0, grads, lr=0.01, weight_decay=0.1)
    w_ref, v_ref = keras_rmsprop_steps(w0, grads, lr=0.01, weight_decay=0.1)
    np.testing.assert_allclose(w, w_ref, rtol=1e-5)
    np.testing.assert_allclose(v, v_ref, rtol=1e-5)


def test_make_optimizer_follows_the_config():
    params = [torch.nn.Parameter(torch.zeros(3))]
    rms = make_optimizer(TrainConfig(lr=0.5), params)
    assert isinstance(rms, KerasRMSprop) and rms.defaults["lr"] == 0.5 and rms.defaults["rho"] == 0.9
    adam = make_optimizer(TrainConfig(optimizer="adam", weight_decay=0.01), params)
    assert isinstance(adam, torch.optim.AdamW) and adam.defaults["eps"] == 1e-7
    assert adam.defaults["betas"] == (0.9, 0.999)  # PyTorch's and Keras's defaults
    fast = make_optimizer(RECIPES["fast"], params)  # tuomaso/train_mnist_fast's betas
    assert fast.defaults["betas"] == (0.7, 0.9) and fast.defaults["lr"] == RECIPES["fast"].lr
    sgd = make_optimizer(TrainConfig(optimizer="sgd"), params)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.9
