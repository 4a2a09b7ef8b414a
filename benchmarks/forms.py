"""Numbers and digits written in a form's fields: a printed box, a row of boxes (a comb), a rule under the
number. Strict string accuracy on numbers of 3-6 MNIST test digits (digitlab.synth.number_picture, wide
gaps) in each form (digitlab.synth.in_form) against the same numbers on plain paper; and single test
digits in a box or over a rule (a comb of one is a box), read by `predict`'s road: accepted and right.

    python benchmarks/forms.py MODEL [--n 100] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine_line  # noqa: E402

from digitlab.data import load_mnist  # noqa: E402
from digitlab.modelfile import load  # noqa: E402
from digitlab.pieces import find_verifier  # noqa: E402
from digitlab.predict import predict_records  # noqa: E402
from digitlab.prepare import prepare  # noqa: E402
from digitlab.reading import read  # noqa: E402
from digitlab.synth import FORMS, in_form, number_picture  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--n", type=int, default=100, help="numbers (and single digits) per form")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    model, data = load(args.model), load_mnist(args.data_dir)
    verifier = find_verifier(args.model)
    print(machine_line())
    print(f"{args.model}, piece verifier: {'yes' if verifier is not None else 'no'}; {args.n} per form")
    print("| field | numbers read right (strict) | single digits accepted and right |\n|---|---|---|")
    t0 = time.perf_counter()
    for form in ("plain", *FORMS):
        rng = np.random.default_rng(args.seed)  # the same numbers and digits in every form
        numbers = digits = 0
        for _ in range(args.n):
            idx = rng.choice(len(data.test_images), int(rng.integers(3, 7)), replace=False)
            picture, boxes = number_picture(data.test_images[idx], rng, "wide")
            picture = picture if form == "plain" else in_form(picture, boxes, form, rng)
            numbers += read(model, picture, pieces=verifier)["text"] == "".join(map(str, data.test_labels[idx]))
            one, one_box = number_picture(data.test_images[idx[:1]], rng, "wide")
            one = one if form == "plain" else in_form(one, one_box, "box" if form == "comb" else form, rng)
            record = predict_records(model, [prepare(one)], ["digit"])[0]
            digits += record["digit"] is not None and int(record["digit"]) == int(data.test_labels[idx[0]])
        print(f"| {form} | {numbers / args.n:.1%} | {digits / args.n:.1%} |")
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
