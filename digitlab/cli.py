"""The `digitlab` command: a thin layer over the Python API. Imports are lazy, so that
`digitlab predict` never pays for torch."""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import typing
from collections.abc import Mapping

from digitlab import __version__
from digitlab.config import RECIPES, TrainConfig, check_output, cli_fields, config_from_recipe, recipe_settings
from digitlab.errors import DigitlabError
from digitlab.model import ARCHITECTURES  # plain data (NumPy only): the help lists the names
from digitlab.serve import MAX_UPLOAD


def _data_args(p: argparse.ArgumentParser, dataset: bool = True) -> None:
    p.add_argument("--data-dir", help="folder with the IDX files, or Keras's mnist.npz "
                   "(default: $DIGITLAB_DATA_DIR, then the cache)")
    if dataset:
        p.add_argument("--dataset", default=None, choices=["mnist", "fashion-mnist"],
                       help="dataset (default: mnist, or the model's own)")


def _train_args(p: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field (help, choices and metavar from its metadata). Every default is
    None, so that only what the user typed overrides the recipe; the help shows the seed recipe's value."""
    hints = typing.get_type_hints(TrainConfig)
    varies = {name for cfg in RECIPES.values() for name, value in recipe_settings(cfg).items()
              if value != getattr(TrainConfig, name)}
    for f in cli_fields():
        meta, kind = f.metadata, _base_type(hints[f.name])
        value = {False: "off", True: "on"}.get(f.default, f.default) if isinstance(f.default, bool) else f.default
        shown = "" if f.default is None else f" (default: {value}" + (", or the recipe's)" if f.name in varies
                                                                            else ")")
        kw: dict = {"default": None, "help": (meta["help"] + shown).replace("%", "%%")}
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw.update(type=kind, choices=meta.get("choices"), metavar=meta.get("metavar"))
        p.add_argument("--" + f.name.replace("_", "-"), **kw)


def _base_type(hint) -> type:
    """int for `int | None`, and so on: the type argparse converts an option's text to."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def build_parser() -> argparse.ArgumentParser:
    """The `digitlab` argument parser: one subcommand per cmd_* function below; train's options come from TrainConfig's
    fields."""
    # allow_abbrev=False: `--epoch 1` must not pass for `--epochs 1` (nor any other prefix).
    parser = argparse.ArgumentParser(prog="digitlab", description="Train, evaluate, inspect and serve "
                                     "handwritten-digit recognizers.", allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"digitlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=functools.partial(argparse.ArgumentParser, allow_abbrev=False))

    p = sub.add_parser("summary", help="print the model's layers, like Keras's model.summary()")
    p.add_argument("model", nargs="?", help="a model file (default: the tutorial architecture)")
    p.add_argument("--arch", default="tutorial",
                   help=f"architecture when no model is given ({', '.join(ARCHITECTURES)})")

    p = sub.add_parser("train", help="train a model (defaults: the tutorial's recipe)",
                       description="Train a model. A recipe gives the starting settings; options override them.")
    _train_args(p)
    p.add_argument("--nproc", type=int, default=1,
                   help="data-parallel processes on this machine (launches torchrun; --batch-size is global)")

    sub.add_parser("recipes", help="list the training recipes and their settings")

    p = sub.add_parser("evaluate", help="test-set metrics of a model, or of several as an ensemble")
    p.add_argument("models", nargs="+", metavar="MODEL")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plots", metavar="DIR", help="write confusion.png and misclassified.png into DIR")
    p.add_argument("--images", metavar="DIR",
                   help="your own labelled digits instead of the test set: DIR/0/*.png ... DIR/9/*.png")
    _data_args(p)

    p = sub.add_parser("predict", help="recognize digits in image files, folders, or test-set images")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("sources", nargs="*", metavar="SOURCE", help="image files or folders of images")
    p.add_argument("--index", type=int, action="append", default=[], help="test-set image N (repeatable)")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    _data_args(p)

    p = sub.add_parser("read", help="read whole numbers (several digits in one image), left to right")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="image files or folders of images")
    p.add_argument("--json", action="store_true", help="print a JSON list of records")
    p.add_argument("--pieces", metavar="FILE", default=None,
                   help="a piece verifier (python -m digitlab.pieces); default: MODEL.pieces.safetensors if it exists")

    p = sub.add_parser("explain", help="where the evidence for each answer lies (attribution maps)")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("sources", nargs="+", metavar="IMAGE", help="image files or folders of images")
    p.add_argument("--method", default="occlusion", choices=["occlusion", "integrated-gradients"],
                   help="occlusion (forward passes only, no torch) or integrated-gradients (Captum)")
    p.add_argument("--out", metavar="PNG", help="write the map over what the model saw (one image: this file; "
                   "several: PNG-<n>.png)")
    p.add_argument("--json", action="store_true", help="print a JSON list with the 28x28 attribution")
    p.add_argument("--overwrite", action="store_true", help="replace map files that already exist")

    p = sub.add_parser("show", help="render a test image (PNG with --out, else in the terminal)")
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--out", help="PNG file to write")
    p.add_argument("--train", action="store_true", help="from the training set instead of the test set")
    _data_args(p)

    _serve_args(sub.add_parser("serve", help="HTTP API and drawing page"))

    p = sub.add_parser("import-keras", help="convert a Keras .h5/.keras file of the tutorial's network")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--out", required=True, help="digitlab model file to write")

    p = sub.add_parser("export", help="export a model to ONNX")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--onnx", required=True, metavar="OUT", help="ONNX file to write")
    p.add_argument("--int8", action="store_true",
                   help="quantize to int8 (onnxruntime static QDQ, calibrated on 512 training images); "
                        "see benchmarks/int8.py for whether it pays on this machine")
    return parser


def _serve_args(p: argparse.ArgumentParser) -> None:
    """`digitlab serve`'s options: the model, where to listen, the bounds, the workers, the piece verifier."""
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-upload", type=int, default=MAX_UPLOAD, help="largest request body in bytes")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes (each loads its own model copy and takes a share of the cores)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also accept this Host header name (repeatable; default: loopback names only)")
    p.add_argument("--pieces", metavar="FILE", default=None,
                   help="the piece verifier /api/read uses; default: MODEL.pieces.safetensors if it exists")


def cmd_summary(args: argparse.Namespace) -> int:
    """`digitlab summary [MODEL | --arch NAME]`: the network layer by layer, as Keras prints it. Returns the exit
    status."""
    from digitlab.model import summary

    if args.model:
        from digitlab.modelfile import load

        arch = load(args.model).arch
    elif args.arch in ARCHITECTURES:
        arch = ARCHITECTURES[args.arch]
    else:
        raise DigitlabError(f"--arch: unknown {args.arch!r}; expected one of {', '.join(ARCHITECTURES)}")
    print(summary(arch))
    return 0


def torchrun_env(nproc: int, threads: int | None, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment for `--nproc` processes: environ with OMP_NUM_THREADS set when the user has not set it
    (to --threads, else this machine's usable cores shared out, at least 1 each). torchrun itself would set 1
    and print a multi-line banner saying so to every user; an explicit value keeps it quiet."""
    env = dict(environ)
    if not env.get("OMP_NUM_THREADS"):
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        env["OMP_NUM_THREADS"] = str(threads or max(1, cores // nproc))
    return env


def cmd_train(args: argparse.Namespace, argv: list[str]) -> int:
    """`digitlab train`: a recipe with the options given on the command line (argv tells which were given). Returns the
    exit status."""
    # Only what the user typed overrides the recipe (every option's default is None).
    given = {f.name: getattr(args, f.name) for f in cli_fields() if getattr(args, f.name) is not None}
    config = config_from_recipe(given.pop("recipe", "seed"), **given)
    # A bad setting or output is one line at once, before torch's 2 s import (a resumed run's output is
    # checked against its checkpoint by train()). Under --nproc: one line, not one per process.
    config.validate()
    if not config.resume:
        check_output(config)
    from digitlab.training import train

    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        # A convenience for `torchrun --standalone --nproc-per-node N -m digitlab train ...`.
        rest = [a for i, a in enumerate(argv) if a != "--nproc" and (i == 0 or argv[i - 1] != "--nproc")
                and not a.startswith("--nproc=")]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
               "-m", "digitlab", *rest]
        return subprocess.run(cmd, env=torchrun_env(args.nproc, config.threads, os.environ)).returncode
    train(config)
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    """`digitlab recipes`: each recipe's settings, one line each. Returns 0."""
    for name, cfg in RECIPES.items():
        print(f"{name:>5}: " + ", ".join(f"{k}={v}" for k, v in recipe_settings(cfg).items()))
    return 0


def _test_set(data_dir: str | None, dataset: str):
    from digitlab.data import load_mnist

    return load_mnist(data_dir, dataset)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """`digitlab evaluate MODEL...`: the test-set (or a labelled folder's) report; several models are an ensemble.
    Returns the exit status."""
    from digitlab.evaluate import evaluate, format_report
    from digitlab.modelfile import load

    models = [load(m) for m in args.models]
    if args.images:
        from digitlab.prepare import load_labelled_folder

        images, labels, _ = load_labelled_folder(args.images, models[0].classes)
    else:
        data = _test_set(args.data_dir, args.dataset or models[0].metadata.get("dataset", "mnist"))
        images, labels = data.test_images, data.test_labels
    result, probs = evaluate(models, images, labels)
    result["images"] = args.images or "test set"
    if args.plots:
        from pathlib import Path

        from digitlab.plots import confusion_png, misclassified_png

        out = Path(args.plots)
        result["plots"] = [str(confusion_png(result["confusion"], models[0].classes, out / "confusion.png")),
                           str(misclassified_png(images, labels, probs, models[0].classes,
                                                 out / "misclassified.png"))]
    if args.json:
        print(json.dumps(result))
    else:
        print(format_report(result))
        for p in result.get("plots", []):
            print(f"wrote {p}")
    return 0


def _one_line(text: str) -> str:
    """text with every character that is not printable escaped as Python writes it (a newline as \\n, a
    byte of a file name that is not valid UTF-8 as \\udcXX): one line, and printable in any locale."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class _Input(typing.NamedTuple):
    """One input of predict, read or explain: its name, and what work() made of it or why it failed."""

    source: str
    result: typing.Any = None
    error: str | None = None


def _each_source(sources: list[str], work) -> list[_Input]:
    """work(path) for every image file among sources (folders expanded), the way predict, read and explain
    all take their inputs: one entry per input, in order, with its result or its error; each error is
    printed on one line (stderr), the rest go on."""
    from digitlab.images import source_files

    entries = []
    for path, why in source_files(sources):
        try:
            if why is not None:
                raise DigitlabError(f"{path}: {why}")
            entries.append(_Input(str(path), work(path)))
        except DigitlabError as e:
            entries.append(_Input(str(path), error=_one_line(str(e))))
    for entry in entries:
        if entry.error is not None:
            print(f"digitlab: error: {entry.error}", file=sys.stderr)
    return entries


def _every_record(entries: list[_Input], records: list[dict]) -> list[dict]:
    """The JSON output: records (one per entry that did not fail, in order) with {"source", "error"} in
    the place of each entry that failed, so that every input has its record."""
    done = iter(records)
    return [next(done) if e.error is None else {"source": e.source, "error": e.error} for e in entries]


def cmd_predict(args: argparse.Namespace) -> int:
    """`digitlab predict MODEL SOURCE...`: one record per input (failed ones too); exit 1 if any failed."""
    from digitlab.images import decode
    from digitlab.modelfile import load
    from digitlab.predict import describe, predict_records
    from digitlab.prepare import prepare

    if not args.sources and not args.index:
        raise DigitlabError("predict: give image files or folders, or --index N for a test-set image")
    model = load(args.model)
    # (decode() silences Pillow's warnings on damaged EXIF)
    entries = _each_source(args.sources, lambda path: prepare(decode(path)))
    if args.index:
        data = _test_set(args.data_dir, args.dataset or model.metadata.get("dataset", "mnist"))
        for i in args.index:
            if not 0 <= i < len(data.test_images):
                why = f"--index {i}: out of range 0..{len(data.test_images) - 1}"
                print(f"digitlab: error: {why}", file=sys.stderr)
                entries.append(_Input(f"--index {i}", error=why))
                continue
            entries.append(_Input(f"test[{i}] (label {data.test_labels[i]})", prepare(data.test_images[i])))
    ok = [e for e in entries if e.error is None]
    records = predict_records(model, [e.result for e in ok], [e.source for e in ok])
    if args.json:  # JSON escapes newlines and undecodable bytes (as \udcXX) itself
        print(json.dumps(_every_record(entries, records)))
    else:
        for r in records:
            print(_one_line(describe(r)))
            if r["probabilities"] is not None:
                print("   " + "  ".join(f"{c}:{p:.3f}" for c, p in zip(model.classes, r["probabilities"], strict=True)))
    return 1 if len(ok) < len(entries) else 0


def cmd_read(args: argparse.Namespace) -> int:
    """`digitlab read MODEL SOURCE...`: whole numbers, one record per picture; exit 1 if any failed."""
    from digitlab.pieces import digit_model, find_verifier
    from digitlab.reading import read_file

    model = digit_model(args.model)
    verifier = find_verifier(args.model, args.pieces)
    entries = _each_source(args.sources, lambda path: read_file(model, path, source=str(path), pieces=verifier))
    records = [e.result for e in entries if e.error is None]
    if args.json:
        print(json.dumps(_every_record(entries, records)))
    else:
        for r in records:
            shown = r["text"] or "(no digits)"
            confidences = " ".join(f"{d['confidence']:.3f}" for d in r["digits"])
            print(_one_line(f"{r['source']}: {shown}  ({r['status']}{'; ' + confidences if confidences else ''})"))
    return 1 if len(records) < len(entries) else 0


def cmd_explain(args: argparse.Namespace) -> int:
    """`digitlab explain MODEL IMAGE...`: attribution maps (occlusion or integrated gradients); exit 1 if any failed."""
    from pathlib import Path

    import numpy as np

    from digitlab.explain import attribution_png
    from digitlab.images import decode
    from digitlab.modelfile import load
    from digitlab.predict import describe, explain_records
    from digitlab.prepare import prepare

    if args.out and not args.overwrite:  # checked before any work: never replace what the user has
        out = Path(args.out)
        taken = [q for q in [out, *out.parent.glob(f"{out.stem}-*.png")] if q.exists() or q.is_symlink()]
        if taken:
            raise DigitlabError(f"--out: {taken[0]} already exists; choose another name or add --overwrite")
    model = load(args.model)
    entries = _each_source(args.sources, lambda path: prepare(decode(path)))
    ok = [e for e in entries if e.error is None]
    records = explain_records(model, [e.result for e in ok], [e.source for e in ok], method=args.method)
    for i, (r, e) in enumerate(zip(records, ok, strict=True)):
        if args.out and r["attribution"] is not None:
            out = Path(args.out) if len(records) == 1 else Path(args.out).with_name(f"{Path(args.out).stem}-{i}.png")
            r["map"] = str(attribution_png(e.result.image, np.asarray(r["attribution"], dtype=np.float32), out))
    if args.json:
        print(json.dumps(_every_record(entries, records)))
    else:
        for r in records:
            print(_one_line(describe(r)) + (f"  map: {r['map']}" if "map" in r else ""))
    return 1 if len(ok) < len(entries) else 0


def cmd_show(args: argparse.Namespace) -> int:
    """`digitlab show --index N [--train] [--out PNG]`: one MNIST image in the terminal or as a PNG. Returns the exit
    status."""
    from digitlab.plots import show_png, show_terminal

    data = _test_set(args.data_dir, args.dataset or "mnist")
    images, labels = (data.train_images, data.train_labels) if args.train else (data.test_images, data.test_labels)
    if not 0 <= args.index < len(images):
        raise DigitlabError(f"--index {args.index}: out of range 0..{len(images) - 1}")
    image, label = images[args.index], data.classes[labels[args.index]]
    which = "train" if args.train else "test"
    if args.out:
        print(f"wrote {show_png(image, args.out, title=f'{which}[{args.index}]: {label}')}")
    else:
        print(show_terminal(image))
        print(f"{which}[{args.index}]: label {label}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """`digitlab serve MODEL`: the HTTP API and the drawing page (127.0.0.1 unless --host says otherwise)."""
    from digitlab.serve.app import run

    if args.workers < 1:
        raise DigitlabError(f"--workers {args.workers}: expected 1 or more")
    run(args.model, host=args.host, port=args.port, max_upload=args.max_upload, workers=args.workers,
        allow_hosts=args.allow_host, pieces=args.pieces)
    return 0


def cmd_import_keras(args: argparse.Namespace) -> int:
    """`digitlab import-keras FILE OUT`: a Keras .h5/.keras model as a digitlab model file. Returns the exit status."""
    from digitlab.modelfile import import_keras

    path = import_keras(args.file, args.out)
    print(f"wrote {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """`digitlab export MODEL --onnx OUT [--int8]`: the model as ONNX (int8: static quantization). Returns the exit
    status."""
    from digitlab.modelfile import load
    from digitlab.onnx import export_onnx

    path = export_onnx(load(args.model), args.onnx, int8=args.int8)
    print(f"wrote {path}")
    return 0


COMMANDS = {"summary": cmd_summary, "recipes": cmd_recipes, "evaluate": cmd_evaluate, "predict": cmd_predict,
            "read": cmd_read, "explain": cmd_explain, "show": cmd_show, "serve": cmd_serve,
            "import-keras": cmd_import_keras, "export": cmd_export}


def _parse(argv: list[str]) -> argparse.Namespace:
    """Parse argv; an unknown option is reported with the subcommand's own usage and the closest option
    it has (argparse alone reports it with the top-level usage)."""
    import difflib

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[args.command]
        options = [o for a in sub._actions for o in a.option_strings]
        close = difflib.get_close_matches(extra[0].split("=")[0], options, n=1)
        sub.error(f"unrecognized arguments: {' '.join(extra)}" + (f" (did you mean {close[0]}?)" if close else ""))
    return args


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"digitlab: warning: {_one_line(str(message))}\n"


def main(argv: list[str] | None = None) -> int:
    """The `digitlab` command: parse argv, run the subcommand; DigitlabError becomes one line on stderr and exit 2."""
    import warnings

    warnings.formatwarning = _one_line_warning  # one line, like the errors: no source line from our code
    argv = sys.argv[1:] if argv is None else argv
    args = _parse(argv)
    try:
        if args.command == "train":
            return cmd_train(args, argv)
        return COMMANDS[args.command](args)
    except DigitlabError as e:
        print(f"digitlab: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)  # 130 for an interrupted training (digitlab.training)
    except KeyboardInterrupt:
        print("digitlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as e:  # a file we were told to write or read: the system's own words, on one line
        print(f"digitlab: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
