"""Where the evidence for an answer lies: attribution maps over the 28x28 input the model saw.

Two methods:

- ``occlusion`` (Zeiler & Fergus 2014): black out a 4x4 window at every position (stride 2) and measure
  how much the explained digit's logit (relative to the mean logit) drops; a pixel's attribution is the
  mean drop over the windows that cover it. Forward passes only, all in one batch through DigitModel.predict: no torch.
- ``integrated-gradients`` (Sundararajan et al. 2017) on the logits, from a black baseline, 50 steps,
  by Captum (captum.attr.IntegratedGradients) on the model's PyTorch twin; torch is imported only here.

Both can explain the evidence for the digit *against* another class (``versus``, e.g. the runner-up):
the attribution of the difference between the two classes' outputs.
"""

from __future__ import annotations

import io
import weakref
from pathlib import Path
from typing import Any

import numpy as np

METHODS = ("occlusion", "integrated-gradients")
WINDOW, STRIDE = 4, 2  # occlusion: 13 x 13 = 169 windows; 3 x 1 (676) gave the same maps, 4x the cost
IG_STEPS = 50  # Captum's default; the completeness gap is ~1e-4 of the logit here (stack-recipes.md §5)
# Captum's passes keep each input's activations for the backward pass, under 3x model.forward_bytes an image
# (1.7x measured, a wide 1x1 net): a pass holds at most this much (a file may declare 26 MB an image).
IG_BUDGET = 128 << 20

# How many windows cover each pixel (1 at the corners, 4 inside): the map is the mean over them.
_COVER = np.zeros((28, 28), np.float32)
for _r in range(0, 28 - WINDOW + 1, STRIDE):
    for _c in range(0, 28 - WINDOW + 1, STRIDE):
        _COVER[_r:_r + WINDOW, _c:_c + WINDOW] += 1
_torch_twins: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def explain(model: Any, image: np.ndarray, method: str = "occlusion", target: int | None = None,
            versus: int | str | None = None) -> dict[str, Any]:
    """An attribution map for one MNIST-style image.

    model: a DigitModel. image: (28, 28) uint8 0..255 or float 0..1, ink bright (what prepare() gives).
    target: the class to explain (default: the predicted digit). versus: a class, or "runner-up" (the
    second most probable), to explain target *against* it.
    Returns {"method", "digit" (the prediction), "target", "versus" (None or a class), "attribution":
    float32 (28, 28), positive where the pixel's ink is evidence for target}; for an inkless image
    "digit" and "attribution" are None (there is nothing to explain).
    Raises ValueError for an unknown method, a class out of range, or an image predict would refuse."""
    from digitlab.prepare import model_inputs

    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    x = model_inputs(np.asarray(image)).astype(np.float32) / 255.0
    if x.shape[0] != 1:
        raise ValueError(f"image: expected one (28, 28) image, got {x.shape[0]}")
    if not x.any():
        return {"method": method, "digit": None, "target": None, "versus": None, "attribution": None}
    probs = model.predict(x)[0]
    order = np.argsort(-probs)
    digit = int(order[0])
    target = digit if target is None else _class(target, len(probs), "target")
    if versus == "runner-up":
        versus = int(order[1]) if int(order[0]) == target else int(order[0])
    elif versus is not None:
        versus = _class(versus, len(probs), "versus")
    attribution = (occlusion if method == "occlusion" else integrated_gradients)(model, x[0], target, versus)
    return {"method": method, "digit": digit, "target": target, "versus": versus, "attribution": attribution}


def _class(value: Any, classes: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < classes:
        raise ValueError(f"{name}: expected a class 0..{classes - 1}, got {value!r}")
    return int(value)


def occlusion(model: Any, x: np.ndarray, target: int, versus: int | None = None) -> np.ndarray:
    """Occlusion map, float32 (28, 28): mean drop of z_target - mean(z) (or z_target - z_versus) over the
    WINDOW x WINDOW black windows that cover each pixel. x: float32 (28, 28) in [0, 1]. One batch of at most 170 forward
    passes (the image and each window that covers ink)."""
    starts = range(0, 28 - WINDOW + 1, STRIDE)
    # A window over black changes nothing (its drop is exactly 0): only windows with ink are run.
    windows = [(r, c) for r in starts for c in starts if x[r:r + WINDOW, c:c + WINDOW].any()]
    batch = np.repeat(x[None], len(windows) + 1, axis=0)
    for i, (r, c) in enumerate(windows, start=1):
        batch[i, r:r + WINDOW, c:c + WINDOW] = 0
    # Not p(target), nor log p(target): for a confident model both stay ~1 (~0) under most windows
    # (saturation), and only the one window that breaks the digit shows. Logits do not saturate, and
    # predict gives them up to a per-row constant (log p = z - logsumexp z), which these differences cancel:
    # log p(target) - log p(versus) = z_target - z_versus; log p(target) - mean log p = z_target - mean z.
    # (Probabilities under 1e-37 are floored, which only the hopeless classes reach.)
    logp = np.log(np.maximum(model.predict(batch), np.float32(1e-37)))
    out = logp[:, target] - (logp[:, versus] if versus is not None else logp.mean(axis=1))
    drop = out[0] - out[1:]
    total = np.zeros((28, 28), np.float32)
    for d, (r, c) in zip(drop, windows, strict=True):
        total[r:r + WINDOW, c:c + WINDOW] += d
    return total / _COVER


def integrated_gradients(model: Any, x: np.ndarray, target: Any, versus: Any = None) -> np.ndarray:
    """Integrated gradients of the target logit (minus the versus logit), float32 (28, 28), from a black
    baseline in IG_STEPS steps, by Captum. x: float32 (28, 28) in [0, 1], or a batch (N, 28, 28) with
    target (and versus) a class each: then (N, 28, 28), in one Captum call."""
    import torch
    from captum.attr import IntegratedGradients

    net = _torch_twins.get(model)
    if net is None:
        net = _torch_twins[model] = model.to_torch()
    inputs = torch.from_numpy(np.ascontiguousarray(x, np.float32)).reshape(-1, 1, 28, 28)
    n = inputs.shape[0]
    t = torch.as_tensor(np.broadcast_to(np.asarray(target), (n,)).astype(np.int64))
    v = None if versus is None else torch.as_tensor(np.broadcast_to(np.asarray(versus), (n,)).astype(np.int64))

    def forward(batch, t, v):  # Captum repeats the extra arguments along with each input's steps
        z = net(batch)
        rows = torch.arange(z.shape[0])
        return z[rows, t] - (z[rows, v] if v is not None else 0)

    attr = IntegratedGradients(forward).attribute(inputs, baselines=torch.zeros_like(inputs),
                                                  additional_forward_args=(t, v), n_steps=IG_STEPS,
                                                  internal_batch_size=_ig_batch(model, n))
    out = attr.detach().numpy().astype(np.float32)
    return out.reshape(28, 28) if np.ndim(x) == 2 else out.reshape(n, 28, 28)


def _ig_batch(model: Any, n: int) -> int:
    """Inputs per Captum pass for n images: all their steps, up to 2048 and IG_BUDGET of activations, but at
    least two per image (Captum's minimum: it takes differences between consecutive steps)."""
    from digitlab.model import forward_bytes

    return max(2 * n, min(n * IG_STEPS, 2048, IG_BUDGET // (3 * forward_bytes(model.arch))))


def attribution_overlay(image: np.ndarray, attribution: np.ndarray, scale: int = 10) -> np.ndarray:
    """RGB uint8 (28*scale, 28*scale, 3): the input in grey, dimmed, under red where the attribution is
    evidence for the target and blue where against, opacity by |attribution| / its largest magnitude."""
    img = np.asarray(image, np.float32)
    grey = img / 255.0 if img.max() > 1 else img
    a = np.asarray(attribution, np.float32)
    peak = float(np.abs(a).max()) or 1.0
    alpha = (np.abs(a) / peak)[..., None] * 0.85
    colour = np.where((a >= 0)[..., None], [1.0, 0.1, 0.1], [0.1, 0.35, 1.0]).astype(np.float32)
    base = np.repeat(grey[..., None] * 0.6, 3, axis=2)
    rgb = (base * (1 - alpha) + colour * alpha) * 255
    rgb = np.clip(rgb, 0, 255).round().astype(np.uint8)
    return np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)


def attribution_png(image: np.ndarray, attribution: np.ndarray, path: str | Path, scale: int = 10) -> Path:
    """Write attribution_overlay(image, attribution, scale) as a PNG, atomically. Raises OSError."""
    from PIL import Image

    from digitlab._io import atomic_write_bytes

    buf = io.BytesIO()
    Image.fromarray(attribution_overlay(image, attribution, scale)).save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())
