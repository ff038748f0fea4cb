"""Image-quality finder vs cleanvision on planted degradations.

Real images (the Fashion-MNIST test set, 28x28 gray, from ../shared/datasets) and a
synthesised colour set (96x96 shapes on textured gradients) get degradations planted at known
rates: blur, darkening, overexposure, Gaussian noise, constant images and downscaling (and
grayscale in the colour set). Precision and recall per issue type, for our finder
(``curation.finders.image_quality``) and for cleanvision's Imagelab where it is installed.

Run: .venv/bin/python benchmarks/bench_image_quality.py [--count 3000] [--rate 0.03]
Writes benchmarks/results/bench_image_quality.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation.finders.base import FinderContext  # noqa: E402
from curation.finders.image_quality import ImageQualityConfig, find_image_quality  # noqa: E402
from curation.idx import read_idx  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets" / "fashion-mnist" / "t10k-images-idx3-ubyte.gz"
RESULTS = ROOT / "benchmarks" / "results"
# planted degradation -> (our issue name, cleanvision issue column or None)
KINDS = {
    "blur": ("blurred", "is_blurry_issue"),
    "dark": ("dark", "is_dark_issue"),
    "overexposed": ("overexposed", "is_light_issue"),
    "noise": ("noisy", None),
    "constant": ("near_constant", "is_low_information_issue"),
    "downscale": ("small", "is_odd_size_issue"),
    "grayscale": ("grayscale", "is_grayscale_issue"),
}


def degrade(image: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    mode = image.mode
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur(radius=max(image.width / 28 * 1.2, 1.0)))
    array = np.asarray(image, dtype=np.float64) / 255
    if kind == "dark":
        array = array * rng.uniform(0.15, 0.3)
    elif kind == "overexposed":
        lift = rng.uniform(0.6, 0.8)
        array = lift + (1 - lift) * array
    elif kind == "noise":
        array = array + rng.normal(0, rng.uniform(0.15, 0.25), array.shape)
    elif kind == "constant":
        array = np.full_like(array, rng.uniform(0.1, 0.9)) + rng.normal(0, 0.005, array.shape)
    elif kind == "downscale":
        factor = rng.uniform(0.3, 0.5)
        return image.resize((max(2, round(image.width * factor)), max(2, round(image.height * factor))),
                            Image.Resampling.BILINEAR)
    elif kind == "grayscale":
        return image.convert("L").convert(mode)
    return Image.fromarray(np.clip(np.round(array * 255), 0, 255).astype(np.uint8), mode)


def colour_image(rng: np.random.Generator, side: int = 96) -> Image.Image:
    """A colour picture: a textured two-colour gradient with a few filled shapes."""
    a, b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    t = np.linspace(0, 1, side)[:, None, None]
    base = a * (1 - t) + b * t
    base = np.broadcast_to(base, (side, side, 3)) + rng.normal(0, 0.04, (side, side, 3))
    image = Image.fromarray(np.clip(base * 255, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(2, 6)):
        x0, y0 = rng.integers(0, side - 20, 2)
        x1, y1 = x0 + rng.integers(10, 50), y0 + rng.integers(10, 50)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([int(x0), int(y0), int(x1), int(y1)], fill=colour)
    return image


def build_set(name: str, images: list[Image.Image], kinds: list[str], rate: float, folder: Path,
              rng: np.random.Generator) -> tuple[list[str], list[str | None]]:
    count = len(images)
    truth: list[str | None] = [None] * count
    order = rng.permutation(count)
    per_kind = int(round(rate * count))
    for k, kind in enumerate(kinds):
        for index in order[k * per_kind:(k + 1) * per_kind]:
            truth[index] = kind
    paths = []
    for index, image in enumerate(images):
        if truth[index]:
            image = degrade(image, truth[index], rng)
        path = folder / f"{name}_{index:05d}.png"
        image.save(path)
        paths.append(str(path))
    return paths, truth


def scores(flags: dict[str, np.ndarray], truth: list[str | None], kinds: list[str]) -> dict:
    truth_arr = np.array([t or "" for t in truth])
    out = {}
    for kind in kinds:
        flagged = flags.get(kind)
        planted = truth_arr == kind
        if flagged is None:
            out[kind] = {"precision": None, "recall": None, "flagged": None, "planted": int(planted.sum())}
            continue
        tp = int((flagged & planted).sum())
        out[kind] = {"precision": round(tp / flagged.sum(), 3) if flagged.sum() else None,
                     "recall": round(tp / planted.sum(), 3) if planted.sum() else None,
                     "flagged": int(flagged.sum()), "planted": int(planted.sum())}
    if "blur" in flags and "constant" in kinds:  # the cleanvision failure: flat images called blurred
        out["constant_called_blurred"] = int((flags["blur"] & (truth_arr == "constant")).sum())
    any_flag = flags["_any"]
    planted = truth_arr != ""
    tp = int((any_flag & planted).sum())
    out["any"] = {"precision": round(tp / any_flag.sum(), 3) if any_flag.sum() else None,
                  "recall": round(tp / planted.sum(), 3), "flagged": int(any_flag.sum()), "planted": int(planted.sum())}
    return out


def run_ours(paths: list[str]) -> tuple[dict[str, np.ndarray], float, dict]:
    count = len(paths)
    context = FinderContext(ids=np.array([str(i) for i in range(count)], dtype=object),
                            embeddings=np.zeros((count, 1), np.float32), filepaths=np.array(paths, dtype=object),
                            neighbor_indices=np.zeros((count, 0), np.int64),
                            neighbor_similarities=np.zeros((count, 0), np.float32))
    start = time.perf_counter()
    result = find_image_quality(context, ImageQualityConfig(cache=False))
    seconds = time.perf_counter() - start
    issues = [set(i.split(",")) if i else set() for i in result.table["issues"]]
    flags = {kind: np.array([ours in s for s in issues]) for kind, (ours, _) in KINDS.items()}
    flags["_any"] = result.table["is_issue"].to_numpy(bool)
    return flags, seconds, {"summary": result.summary}


def run_cleanvision(paths: list[str]) -> tuple[dict[str, np.ndarray] | None, float | None, str | None]:
    try:
        from cleanvision import Imagelab
    except ImportError as error:
        return None, None, f"cleanvision not installed: {error}"
    start = time.perf_counter()
    lab = Imagelab(filepaths=paths)
    lab.find_issues(verbose=False)
    seconds = time.perf_counter() - start
    table = lab.issues.reindex(paths)
    flags = {}
    for kind, (_, column) in KINDS.items():
        if column and column in table:
            flags[kind] = table[column].fillna(False).to_numpy(bool)
    issue_columns = [c for c in table.columns if c.startswith("is_") and c.endswith("_issue")
                     and c != "is_near_duplicates_issue" and c != "is_exact_duplicates_issue"]
    flags["_any"] = table[issue_columns].fillna(False).to_numpy(bool).any(axis=1)
    return flags, seconds, None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=0.03, help="share of the images per planted degradation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-cleanvision", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    report = {"count": args.count, "rate_per_kind": args.rate, "seed": args.seed, "sets": {}}
    pixels = read_idx(DATA)[: args.count]
    sets = {
        "fashion-mnist (28x28 gray, real)": ([Image.fromarray(p, "L") for p in pixels],
                                             ["blur", "dark", "overexposed", "noise", "constant", "downscale"]),
        "synthetic colour (96x96)": ([colour_image(rng) for _ in range(args.count)],
                                     ["blur", "dark", "overexposed", "noise", "constant", "downscale", "grayscale"]),
    }
    with tempfile.TemporaryDirectory() as folder:
        for name, (images, kinds) in sets.items():
            paths, truth = build_set(name.split()[0], images, kinds, args.rate, Path(folder), rng)
            ours, seconds, extra = run_ours(paths)
            entry = {"kinds": kinds, "ours": {"seconds": round(seconds, 2), **extra, "scores": scores(ours, truth, kinds)}}
            if not args.no_cleanvision:
                theirs, cv_seconds, note = run_cleanvision(paths)
                entry["cleanvision"] = ({"note": note} if theirs is None else
                                        {"seconds": round(cv_seconds, 2), "scores": scores(theirs, truth, kinds)})
            report["sets"][name] = entry
            print(name, json.dumps(entry, indent=1))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_image_quality.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "bench_image_quality.md").write_text(markdown(report))


def _cell(value, flagged=None) -> str:
    if value is None:
        return "0 flagged" if flagged == 0 else "n/a"
    return f"{value:.2f}"


def markdown(report: dict) -> str:
    lines = [f"### Image quality: planted degradations ({report['count']} images per set, "
             f"{report['rate_per_kind']:.0%} per degradation, seed {report['seed']})", "",
             "Ours: `curation.finders.image_quality` with its defaults (flag at 4 robust scales from the "
             "dataset's own median, no fixed thresholds); cleanvision 0.3.7 `Imagelab.find_issues()` defaults. "
             "Precision / recall of the right issue name per planted degradation; `any`: any flag vs any "
             "planted degradation. cleanvision has no noise check (n/a); \"0 flagged\": no image got that "
             "issue, so no precision. Issue names: ours blurred, dark, overexposed, noisy, near_constant, small, "
             "grayscale; cleanvision blurry, dark, light, (none), low_information, odd_size, grayscale.", ""]
    for name, entry in report["sets"].items():
        lines += [f"**{name}**", "", "| degradation | ours P | ours R | cleanvision P | cleanvision R |",
                  "|---|---|---|---|---|"]
        cv = entry.get("cleanvision", {}).get("scores", {})
        for kind in [*entry["kinds"], "any"]:
            o = entry["ours"]["scores"][kind]
            c = cv.get(kind, {})
            lines.append(f"| {kind} | {_cell(o['precision'], o['flagged'])} | {_cell(o['recall'])} | "
                         f"{_cell(c.get('precision'), c.get('flagged'))} | {_cell(c.get('recall'))} |")
        lines += ["", f"Constant images called blurred: ours {entry['ours']['scores'].get('constant_called_blurred')}, "
                  f"cleanvision {cv.get('constant_called_blurred', 'n/a')} (of "
                  f"{entry['ours']['scores']['constant']['planted']})."]
        note = entry.get("cleanvision", {}).get("note")
        timing = f"ours {entry['ours']['seconds']} s"
        if "seconds" in entry.get("cleanvision", {}):
            timing += f", cleanvision {entry['cleanvision']['seconds']} s"
        lines += ["", f"Time: {timing}." + (f" {note}." if note else ""), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
