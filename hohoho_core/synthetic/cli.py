"""``python -m hohoho_core.synthetic``: write a phantom dataset (and optionally a montage)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hohoho_core.synthetic.dataset import generate_dataset
from hohoho_core.synthetic.montage import save_montage
from hohoho_core.synthetic.plan import DEFAULT_POSITIVE_FRACTION


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hohoho_core.synthetic --out DIR --studies N --seed S [...]``."""
    import argparse  # here, so importing the library never loads the CLI's parser

    parser = argparse.ArgumentParser(
        prog="python -m hohoho_core.synthetic",
        description="Write phantom head-CT studies in the RSNA 2019 layout.",
    )
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    parser.add_argument("--studies", type=int, required=True, help="number of studies")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=512, help="image size in pixels")
    parser.add_argument(
        "--label-noise",
        type=float,
        default=0.0,
        help="fraction of positive runs given one sequential label error",
    )
    parser.add_argument("--min-slices", type=int, default=20)
    parser.add_argument("--max-slices", type=int, default=40)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--positive-fraction",
        type=float,
        default=DEFAULT_POSITIVE_FRACTION,
        help="share of studies with a bleed (default 0.4; enrich a training set with more)",
    )
    parser.add_argument(
        "--randomise",
        action="store_true",
        help="domain randomisation: anatomy, reconstruction, artefacts, hard negatives, "
        "blood density and the labelling rule vary per study (for training robust models)",
    )
    parser.add_argument(
        "--randomise-fraction",
        type=float,
        default=None,
        metavar="F",
        help="randomise only this share of the studies (drawn per study from the seed; the "
        "others are the plain dataset's own studies), as the shipped model's data did",
    )
    parser.add_argument("--slice-spacing", type=float, default=None, metavar="MM",
                        help="render every study at this slice spacing (e.g. 1.25: a thin-slice "
                             "series of the same exam) instead of the drawn 3-6 mm")
    parser.add_argument("--montage", type=Path, default=None, help="also save a PNG montage")
    args = parser.parse_args(argv)
    if args.randomise_fraction is not None:
        if args.randomise:
            parser.error("give --randomise (every study) or --randomise-fraction F, not both")
        if not 0.0 < args.randomise_fraction <= 1.0:
            parser.error(f"--randomise-fraction must be in (0, 1], got {args.randomise_fraction}")
    res = generate_dataset(
        args.out,
        args.studies,
        args.seed,
        size=args.size,
        label_noise=args.label_noise,
        slices=(args.min_slices, args.max_slices),
        workers=args.workers,
        positive_fraction=args.positive_fraction,
        randomise=(args.randomise_fraction if args.randomise_fraction is not None
                   else args.randomise),
        slice_spacing=args.slice_spacing,
    )
    n_img = len(res.truth)
    pos = int((res.studies["subtypes"] != "").sum())
    print(
        f"wrote {len(res.studies)} studies, {n_img} slices ({pos} positive studies, "
        f"{len(res.errors)} injected label errors) to {res.root} in {res.seconds:.1f} s"
    )
    if args.montage is not None:
        save_montage(args.montage, args.out, seed=args.seed, size=args.size)
        print(f"montage: {args.montage}")
    return 0
