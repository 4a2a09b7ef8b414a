"""The Python API's surface: what `import digitlab` gives, and what it does not pull in."""

from __future__ import annotations

import importlib
import subprocess
import sys

import digitlab


def test_train_and_load_are_functions_whatever_is_imported():
    importlib.import_module("digitlab.training")  # a submodule: it must not shadow the digitlab.train function

    assert callable(digitlab.train) and callable(digitlab.load)
    assert digitlab.train.__module__ == "digitlab" and digitlab.load.__module__ == "digitlab"


def test_import_digitlab_and_the_cli_never_import_torch():
    code = ("import sys, digitlab, digitlab.config, digitlab.hardware, digitlab.cli\n"
            "digitlab.cli.build_parser().parse_args(['train', '--epochs', '1'])\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_prediction_never_imports_torch(tiny_model_path):
    code = ("import sys, digitlab, numpy as np\n"
            f"m = digitlab.load({str(tiny_model_path)!r})\n"
            "m.predict(np.zeros((2, 28, 28), np.uint8))\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
