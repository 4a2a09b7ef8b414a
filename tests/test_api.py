"""The Python API's surface: what `import digitlab` gives, and what it does not pull in."""

from __future__ import annotations

import subprocess
import sys


def test_train_stays_a_function_after_importing_the_module():
    import digitlab
    from digitlab.train import TrainConfig  # noqa: F401  (loads the submodule digitlab.train)

    assert callable(digitlab.train) and callable(digitlab.load)


def test_prediction_never_imports_torch(trained_model_path, mnist):
    code = ("import sys, digitlab, numpy as np\n"
            f"m = digitlab.load({str(trained_model_path)!r})\n"
            "m.predict(np.zeros((2, 28, 28), np.uint8))\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
