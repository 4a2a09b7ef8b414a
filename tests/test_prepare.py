"""prepare(): people's pictures made MNIST-style, and the statuses it finds."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from digitlab.errors import ImageError
from digitlab.prepare import prepare


def to_mnist(picture) -> np.ndarray:
    return prepare(picture).image


def test_mnist_image_passes_through_unchanged(mnist):
    for i in range(20):
        assert np.array_equal(to_mnist(Image.fromarray(mnist.test_images[i])), mnist.test_images[i])
        assert np.array_equal(to_mnist(Image.fromarray(255 - mnist.test_images[i])), mnist.test_images[i])


def redraw(digit: np.ndarray, rng: np.random.Generator, size: int = 300) -> Image.Image:
    """An MNIST digit as a person's picture: dark on light, large, off-centre, on a slightly grey page."""
    scale = int(rng.integers(120, 220))
    big = Image.fromarray(255 - digit).resize((scale, scale), Image.BICUBIC)
    canvas = Image.new("L", (size, size), int(rng.integers(215, 256)))
    x, y = (int(v) for v in rng.integers(0, size - scale, 2))
    paper = Image.new("L", (scale, scale), canvas.getpixel((0, 0)))
    canvas.paste(Image.fromarray(np.minimum(np.asarray(big), np.asarray(paper))), (x, y))
    return canvas


def accuracies(model, mnist, pictures) -> tuple[float, float]:
    """Accuracy on the first len(pictures) test digits as MNIST has them, and on pictures made of them."""
    labels = mnist.test_labels[:len(pictures)]
    return ((model.predict(mnist.test_images[:len(pictures)]).argmax(1) == labels).mean(),
            (model.predict(np.stack(pictures)).argmax(1) == labels).mean())


def test_redrawn_digits_are_predicted_like_the_originals(trained_model, mnist):
    rng = np.random.default_rng(0)
    redrawn = [to_mnist(redraw(x, rng)) for x in mnist.test_images[:1000]]
    acc_original, acc_redrawn = accuracies(trained_model, mnist, redrawn)
    assert acc_redrawn >= acc_original - 0.01, (acc_original, acc_redrawn)
    # The same pictures shrunk whole to 28x28 (as canvas apps do) are not MNIST-like: prepared too, and read.
    shrunk = np.stack([np.asarray(redraw(mnist.test_images[i], rng).resize((28, 28))) for i in range(200)])
    assert (trained_model.predict(shrunk).argmax(1) == mnist.test_labels[:200]).mean() >= 0.9


def test_uneven_light_on_the_page(trained_model, mnist):
    """Photos of paper are lit unevenly: a page going from light grey to dark in one corner, with
    sensor noise. A single background level turned the shadow into ink (39% right); the opening
    that follows the light keeps these digits as readable as evenly lit ones."""
    rng = np.random.default_rng(1)
    ramp = np.linspace(0, 1, 280)[None, :] * np.linspace(0.3, 1, 280)[:, None]
    pictures = []
    for digit in mnist.test_images[:300]:
        ink = np.asarray(Image.fromarray(digit).resize((280, 280), Image.BILINEAR)) / 255.0
        page = (230 - 140 * ramp) * (1 - ink) + 40 * ink + rng.normal(0, 10, ink.shape)
        pictures.append(to_mnist(Image.fromarray(np.clip(page, 0, 255).astype(np.uint8))))
    acc_original, acc_shadowed = accuracies(trained_model, mnist, pictures)
    assert acc_shadowed >= acc_original - 0.02, (acc_original, acc_shadowed)


def boxed(digit: np.ndarray, margin: int) -> Image.Image:
    """A digit written in a printed box on a form, cut out with the box."""
    side = 200 + 2 * margin + 20
    page = Image.new("L", (side, side), 235)
    page.paste(Image.fromarray(np.minimum(255 - digit, 235).astype(np.uint8)).resize((200, 200), Image.BILINEAR),
               (margin + 10, margin + 10))
    ImageDraw.Draw(page).rectangle([4, 4, side - 5, side - 5], outline=30, width=4)
    return page


@pytest.mark.parametrize("margin", [0, 30])
def test_box_around_a_digit_from_a_form(trained_model, mnist, margin):
    """The box's lines are removed before cropping; kept, they shrank the digit (11-42% right)."""
    pictures = [to_mnist(boxed(x, margin)) for x in mnist.test_images[:200]]
    acc_original, acc_boxed = accuracies(trained_model, mnist, pictures)
    assert acc_boxed >= acc_original - 0.02, (acc_original, acc_boxed)


def test_printed_digits(trained_model):
    """Meters and forms print their digits: the ten digits in each of matplotlib's DejaVu fonts (sans,
    serif, mono; bold and oblique), black on white, at a size a photo would have."""
    from pathlib import Path

    import matplotlib
    from PIL import ImageFont

    fonts = [f for f in sorted((Path(matplotlib.get_data_path()) / "fonts" / "ttf").glob("DejaVu*.ttf"))
             if "Display" not in f.name]  # the Display faces are subsets without digits
    assert len(fonts) >= 10
    pictures, labels = [], []
    for path in fonts:
        font = ImageFont.truetype(str(path), 160)
        for digit in range(10):
            im = Image.new("L", (240, 240), 255)
            ImageDraw.Draw(im).text((120, 120), str(digit), font=font, fill=0, anchor="mm")
            pictures.append(to_mnist(im))
            labels.append(digit)
    accuracy = (trained_model.predict(np.stack(pictures)).argmax(1) == np.array(labels)).mean()
    assert accuracy >= 0.9, accuracy


@pytest.mark.slow  # prepares hundreds of crops: ~3 s
def test_tightly_cropped_digits_are_not_taken_for_frames(mnist, monkeypatch):
    """A 7's bar or a 0's loop at the edge of a tight crop is the digit, not a box: left alone."""
    import digitlab.prepare as prep

    crops = []
    for i in range(300):
        rows, cols = np.nonzero(mnist.test_images[i] > 30)
        crop = 255 - mnist.test_images[i][rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        s = 150 / max(crop.shape)
        big = Image.fromarray(crop).resize((max(1, round(crop.shape[1] * s)), max(1, round(crop.shape[0] * s))))
        crops += [big, big.filter(ImageFilter.MaxFilter(7))]  # as drawn, and with a thin pen
    with_removal = [to_mnist(c) for c in crops]
    monkeypatch.setattr(prep, "_drop_lines", lambda contrast, t: contrast)
    monkeypatch.setattr(prep, "_drop_frames", lambda contrast, t, rules=False: contrast)
    changed = sum(not np.array_equal(a, to_mnist(c)) for a, c in zip(with_removal, crops, strict=True))
    assert changed <= len(crops) // 100, changed  # at most 1% of tight crops touched at all


def test_a_form_box_within_the_picture_is_dropped(trained_model, mnist):
    """A digit in a printed box with paper around it (synth.in_form: lines 1-6 px, 0-40% of the digit's
    height clear of it, turned up to 3 degrees). Before: 15% of such digits accepted and right with
    `best` (the box was kept: a frame around a shrunk digit)."""
    from digitlab.synth import in_form, number_picture

    rng = np.random.default_rng(0)
    pictures = []
    for digit in mnist.test_images[:100]:
        picture, boxes = number_picture(digit[None], rng, "wide")
        pictures.append(to_mnist(in_form(picture, boxes, "box", rng)))
    acc_original, acc_boxed = accuracies(trained_model, mnist, pictures)
    assert acc_boxed >= acc_original - 0.1, (acc_original, acc_boxed)  # (0.93 against 1.0 with the fixture)


@pytest.mark.parametrize(("draw", "status"), [
    (lambda d: d.rectangle([60, 60, 240, 240], outline=20, width=3), "empty"),  # an empty form box
    (lambda d: d.rectangle([100, 60, 200, 240], outline=20, width=22), "digit"),  # a 0 drawn square
    (lambda d: (d.rectangle([80, 110, 220, 125], fill=20), d.rectangle([80, 175, 220, 190], fill=20)),
     "digit"),  # an "=": two bars, neither a rule under the other
])
def test_frames_and_rules_are_dropped_but_shapes_like_them_are_not(draw, status):
    page = Image.new("L", (300, 300), 235)
    draw(ImageDraw.Draw(page))
    assert prepare(page).status == status


def test_output_is_centred_and_fits_20x20():
    im = Image.new("RGB", (640, 480), "white")
    ImageDraw.Draw(im).rectangle([500, 50, 560, 400], fill=(20, 20, 30))  # tall bar, far right
    out = to_mnist(im)
    rows, cols = np.nonzero(out > 30)
    assert rows.max() - rows.min() + 1 <= 21 and cols.max() - cols.min() + 1 <= 21
    mass = out.astype(float)
    cy = (mass.sum(1) @ np.arange(28)) / mass.sum()
    cx = (mass.sum(0) @ np.arange(28)) / mass.sum()
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1


def test_a_speck_of_dust_does_not_shrink_the_digit():
    im = Image.new("L", (600, 600), 255)
    ImageDraw.Draw(im).line([(300, 150), (300, 450)], fill=0, width=30)
    clean = to_mnist(im)
    ImageDraw.Draw(im).ellipse([560, 560, 566, 566], fill=0)  # a dot far away in the corner
    dusty = to_mnist(im)
    assert np.abs(clean.astype(int) - dusty.astype(int)).max() <= 8
    assert (dusty > 128).sum(axis=0).max() >= 18  # still a full-height stroke, not a shrunken one


def test_thin_pen_strokes_are_thickened():
    im = Image.new("L", (1200, 1200), 255)
    ImageDraw.Draw(im).line([(600, 100), (600, 1100)], fill=0, width=6)  # a "1" in fine pen
    out = to_mnist(im)
    assert (out > 128).sum(axis=1).max() >= 2  # at least 2 px wide, like MNIST strokes


def test_transparent_drawing():
    im = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    ImageDraw.Draw(im).line([(100, 20), (100, 180)], fill=(0, 0, 0, 255), width=16)
    out = to_mnist(im)
    assert out.max() > 200 and out[:, :5].max() == 0 and out[0].max() == 0


def test_blank_image_is_empty():
    assert to_mnist(Image.new("L", (100, 100), 255)).max() == 0


# Issue 17: every way in reads people's digits. Each condition is rendered by digitlab.synth from MNIST
# test digits; before the one road through prepare() these read 11-87% right (shadows, squared paper,
# shrunk canvases), 0% (12-bit scans) or crashed (L*a*b*).
@pytest.mark.parametrize("condition", ["hard shadow", "soft shadow", "ruled, grey", "ruled, stroke on a line",
                                       "squared, grey",
                                       "squared, tilted", "12-bit PNG", "canvas shrunk to 28x28",
                                       "28x28 dark on light", "dim paper", "noise"])
def test_conditions_read_like_plain_scans(trained_model, mnist, condition):
    from digitlab.images import decode
    from digitlab.synth import CONDITIONS

    rng = np.random.default_rng(3)
    digits, labels = mnist.test_images[5000:5100], mnist.test_labels[5000:5100]
    pictures = [CONDITIONS[condition](d, rng) for d in digits]
    inputs = np.stack([prepare(decode(p) if isinstance(p, bytes) else p).image for p in pictures])
    accuracy = (trained_model.predict(inputs).argmax(1) == labels).mean()
    assert accuracy >= 0.93, (condition, accuracy)


def test_enlarged_digits_get_mnist_strokes_and_are_accepted(trained_model, mnist):
    """A digit drawn small (a 280x280 canvas shrunk to 28x28 by the app, the digit ~11 px) is enlarged
    with soft strokes whose cores never reach full ink: the outlier-exposure `best` model answered 93 of
    100 of them "not a digit". Prepared, their strokes have MNIST's profile, and they are accepted."""
    from digitlab.predict import predict_records
    from digitlab.prepare import INK_MEDIAN
    from digitlab.synth import CONDITIONS

    rng = np.random.default_rng(5)
    digits, labels = mnist.test_images[5000:5100], mnist.test_labels[5000:5100]
    prepared = [prepare(CONDITIONS["canvas shrunk to 28x28"](d, rng)) for d in digits]
    medians = [np.median(p.image[p.image > 0.12 * 255]) / 255 for p in prepared]
    assert np.median(medians) >= INK_MEDIAN - 0.05
    records = predict_records(trained_model, prepared, ["p"] * len(prepared))
    assert np.mean([r["status"] == "digit" and r["digit"] == y for r, y in zip(records, labels, strict=True)]) >= 0.95
    # Digits at their own size are left as they were: a plain scan's strokes are not stretched.
    plain = prepare(CONDITIONS["plain scan"](digits[0], rng)).image
    assert np.median(plain[plain > 0.12 * 255]) / 255 < 1.0


@pytest.mark.parametrize("paper", [0.25, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("ink", [0.05, 0.3, 0.5, 0.7])
def test_contrast_sweep_reads_everything_readable(trained_model, mnist, paper, ink):
    """Paper from dark grey to white, ink from 5% to 70% of the paper's brightness: no fixed grey level."""
    from digitlab.synth import on_paper

    rng = np.random.default_rng(4)
    digits, labels = mnist.test_images[5000:5040], mnist.test_labels[5000:5040]
    inputs = np.stack([prepare(on_paper(d, rng, paper=paper, ink_level=ink * paper, noise=0.01 * paper)).image
                       for d in digits])
    assert (trained_model.predict(inputs).argmax(1) == labels).mean() >= 0.95


def test_python_api_doors_agree(trained_model, mnist):
    """A torch tensor batch is a batch (not one PIL-like picture), float lists in 0..1 are 0..1, and a
    dark-on-light array reads like the same digits as MNIST has them."""
    import torch

    x = mnist.test_images[:8]
    expected = trained_model.predict(x).argmax(1)
    assert (trained_model.predict(torch.from_numpy(x)).argmax(1) == expected).all()
    assert (trained_model.predict([a / 255.0 for a in x]).argmax(1) == expected).all()
    assert (trained_model.predict(1.0 - x / 255.0).argmax(1) == expected).all()
    with pytest.raises(ImageError, match=r"shape \(8, 30, 30\); expected"):
        trained_model.predict(np.zeros((8, 30, 30), np.uint8))
    with pytest.raises(ImageError, match="dtype int16"):
        trained_model.predict(np.zeros((2, 28, 28), np.int16))


def two_digits(mnist, gap: int) -> np.ndarray:
    a, b = (255 - mnist.test_images[i] for i in (1, 2))
    page = np.full((60, 28 * 2 + gap + 20), 255, np.uint8)
    page[16:44, 10:38] = a
    page[16:44, 38 + gap:66 + gap] = b
    return page


def test_statuses_empty_and_several_digits(mnist):
    blank = np.full((200, 200), 0.9, np.float32) + np.random.default_rng(0).normal(0, 0.01, (200, 200))
    assert prepare(np.clip(blank, 0, 1)).status == "empty"
    dusty = np.clip(blank, 0, 1)
    dusty[50, 60] = dusty[150, 30] = 0.1  # specks of dust
    dusty[100:104, 100:140] = np.minimum(dusty[100:104, 100:140], 0.85)  # a faint smudge
    assert prepare(dusty).status == "empty"
    p = prepare(two_digits(mnist, 8))
    assert p.status == "several_digits" and p.marks == 2 and len(p.boxes) == 2


def test_tricky_single_digits_are_one_mark():
    """A 5 with its bar detached, a broken 4, an 8 in two loops, a speck beside a 1: one digit each."""
    def page() -> tuple[Image.Image, ImageDraw.ImageDraw]:
        im = Image.new("L", (200, 200), 255)
        return im, ImageDraw.Draw(im)

    five, d = page()
    d.line([(70, 40), (140, 40)], fill=0, width=12)  # the bar, not touching
    d.line([(70, 58), (70, 95)], fill=0, width=12)
    d.arc([60, 85, 140, 165], 200, 160, fill=0, width=12)
    four, d = page()
    d.line([(120, 30), (60, 120), (150, 120)], fill=0, width=12)
    d.line([(125, 80), (125, 175)], fill=0, width=12)  # the stem, broken from the rest
    eight, d = page()
    d.ellipse([70, 30, 130, 95], outline=0, width=12)
    d.ellipse([62, 102, 138, 175], outline=0, width=12)
    one, d = page()
    d.line([(100, 30), (100, 170)], fill=0, width=14)
    d.ellipse([140, 160, 146, 166], fill=0)
    for name, im in [("five", five), ("four", four), ("eight", eight), ("one", one)]:
        p = prepare(im)
        assert p.status == "digit" and p.marks == 1, (name, p.status, p.marks)


def test_a_stroke_lying_on_a_ruled_line_is_kept(trained_model, mnist):
    """Ink crossing a line darkens it further: where a 7's bar or a 5's top lies along a ruled line, the
    line's removal keeps the stroke (before: 96.5% of 200 read, the misses mostly such 7s and 5s)."""
    from digitlab.synth import CONDITIONS

    rng = np.random.default_rng(5)
    digits, labels = mnist.test_images[5000:5150], mnist.test_labels[5000:5150]
    inputs = np.stack([prepare(CONDITIONS["ruled, stroke on a line"](d, rng)).image for d in digits])
    assert (trained_model.predict(inputs).argmax(1) == labels).mean() >= 0.99


def dusty_paper(seed: int) -> np.ndarray:
    """A photo of blank paper: light grey, lit unevenly (a slope up to +-25 grey levels across), sensor
    noise, and 2-6 dark specks of dust of 1-2 px, half of them in one column (a fold, a scanner's streak)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:160, 0:160].astype(np.float32) / 160
    g = rng.uniform(165, 235) + rng.uniform(-25, 25) * xs + rng.uniform(-25, 25) * ys + rng.normal(0, 2, (160, 160))
    col = int(rng.integers(5, 150))
    for k in range(int(rng.integers(2, 7))):
        y, x = rng.integers(5, 150, 2)
        s = int(rng.integers(1, 3))
        g[y:y + s, col if k % 2 else x:(col if k % 2 else x) + s] -= rng.uniform(40, 120)
    return np.clip(g, 0, 255).astype(np.uint8)


def test_dust_on_unevenly_lit_paper_is_empty():
    """Specks of dust are under 0.5% of the picture, so the brightness tails alone are the paper's noise
    and guessed the polarity at random: taken for bright ink, the paper's own unevenness became "ink";
    and specks stacked in one column were joined into one tall mark (a "1")."""
    statuses = [prepare(dusty_paper(seed)).status for seed in range(60)]
    assert statuses == ["empty"] * 60, [(s, st) for s, st in enumerate(statuses) if st != "empty"]


def test_a_small_digit_on_a_big_page_is_found(trained_model, mnist):
    """A 70-110 px digit on a 2000x1500 page fades out at the working side (its strokes under a pixel):
    found again at a finer side, with the speck bounds kept the same size on the page (before: 15 of 200
    read as empty)."""
    from digitlab.synth import CONDITIONS

    rng = np.random.default_rng(0)
    digits, labels = mnist.test_images[5000:5100], mnist.test_labels[5000:5100]
    prepared = [prepare(CONDITIONS["small digit, large page"](d, rng)) for d in digits]
    assert [p.status for p in prepared].count("digit") == 100
    inputs = np.stack([p.image for p in prepared])
    assert (trained_model.predict(inputs).argmax(1) == labels).mean() >= 0.97


def test_components_are_opencvs_default_ones():
    """_components (the faster BBDT labelling) finds the same pieces, with the same boxes and areas, as
    cv2.connectedComponentsWithStats' default, on masks from sparse specks to solid blobs."""
    import cv2

    from digitlab.prepare import _components

    rng = np.random.default_rng(0)
    for i in range(100):
        h, w = (int(v) for v in rng.integers(1, 160, 2))
        m = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        m = cv2.dilate(m, np.ones((2, 2), np.uint8)) if i % 2 else m
        want = cv2.connectedComponentsWithStats(m, connectivity=8)
        got = _components(m)
        assert got[0] == want[0]
        assert sorted(map(tuple, got[2].tolist())) == sorted(map(tuple, want[2].tolist()))


def small_number_photo(mnist, light: np.ndarray, seed: int) -> np.ndarray:
    """Five MNIST test digits ~50 px tall, dark, on a 1008x756 page lit by `light` (grey levels)."""
    import cv2

    strip = np.concatenate(list(mnist.test_images[seed * 5:seed * 5 + 5]), axis=1)
    cover = np.zeros(light.shape, np.float32)
    cover[330:380, 420:670] = cv2.resize(strip, (250, 50), interpolation=cv2.INTER_AREA) / 255.0
    noise = np.random.default_rng(seed).normal(0, 2, light.shape)
    return (np.clip(light * (1 - 0.7 * cover) + noise, 0, 255) / 255).astype(np.float32)


@pytest.mark.parametrize("light", ["shadow 350", "shadow 650", "shadow 900", "vignette"])
def test_a_small_number_under_a_shadow_or_a_vignette_is_dark_ink(mnist, light):
    """Ink under 0.5% of the picture leaves the brightness tails to the light: a shadow's edge across the
    page, a vignette's bright centre beyond a darker border were taken for bright ink (the newcomer's
    sweep: 9 of 14 shadow offsets read wrong, a vignetted blank page read as 33 digits)."""
    from digitlab.prepare import ink_polarity

    yy, xx = np.mgrid[0:756, 0:1008].astype(np.float32)
    if light == "vignette":
        page = 235 - 70 * (((xx - 504) / 504) ** 2 + ((yy - 378) / 378) ** 2)
    else:
        page = 120 + 90 * xx / 1008 + 25 * yy / 756
        page[xx + 0.4 * yy < int(light.split()[1])] *= 0.55
    for seed in range(3):
        picture = small_number_photo(mnist, page, seed)
        assert not ink_polarity(picture, 256), (light, seed)  # (reading's first working side)
    blank = (np.clip(page, 0, 255) / 255).astype(np.float32)
    assert prepare(blank).status == "empty", light


def test_squared_paper_is_never_a_frame(mnist):
    """Tilted squared paper is one piece of grid lines across the picture: with the inner lines judged on
    the solid ink alone (where its faint lines break), the grid passed for a frame and its partial removal
    hid it from _drop_lines (5 of 100 digits then several_digits or not_a_digit)."""
    from digitlab.synth import CONDITIONS

    rng = np.random.default_rng(0)
    statuses = [prepare(CONDITIONS["squared, tilted"](d, rng)).status for d in mnist.test_images[5000:5100]]
    assert statuses.count("digit") == 100, statuses
