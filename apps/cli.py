"""``fieldstudio``: the command line. Each subcommand parses its flags and calls one library function.

User errors (`FieldStudioError`) print one line and exit with status 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys


def _cmd_info(args) -> int:
    from .info import collect_info, format_info

    info = collect_info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _cmd_fit_image(args) -> int:
    from .fit_image import fit_image

    metrics = fit_image(args.image, encoder=args.encoder, steps=args.steps, out=args.out, batch_size=args.batch_size,
                        lr=args.lr, crop=args.crop, device=args.device, seed=args.seed, resume=args.resume,
                        checkpoint_every=args.checkpoint_every, progress=not args.quiet, backend=args.backend)
    print(f"PSNR {metrics['psnr']:.2f} dB  SSIM {metrics['ssim']:.4f}  {metrics['params']:,} params  "
          f"{metrics['steps']} steps in {metrics['seconds']:.1f} s  ->  {args.out}")
    return 0


def _cmd_fit_geo(args) -> int:
    from .fit_geo import fit_geo

    m = fit_geo(args.data, lon=args.lon, lat=args.lat, target=args.target, task=args.task, encoder=args.encoder,
                L=args.L, frequency_num=args.frequency_num, network=args.network, hidden=args.hidden,
                layers=args.layers, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                weight_decay=args.weight_decay, val_fraction=args.val_fraction, seed=args.seed,
                n_points=args.n_points, out=args.out, device=args.device, resume=args.resume,
                checkpoint_every=args.checkpoint_every, progress=not args.quiet)
    score = (f"accuracy {100 * m['accuracy']:.2f}%  cross-entropy {m['cross_entropy']:.4f}" if m["task"] == "classify"
             else f"RMSE {m['rmse']:.4g}  R2 {m['r2']:.4f}")
    print(f"{m['split']}: {score}  {m['params']:,} params  {m['steps']} steps in {m['seconds']:.1f} s  ->  {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fieldstudio", description="Neural fields on any machine.")
    from fieldstudio import __version__

    p.add_argument("--version", action="version", version=f"fieldstudio {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    info = sub.add_parser("info", help="versions, device and optional backends")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=_cmd_info)

    fit = sub.add_parser("fit", help="fit a field to data")
    fit_sub = fit.add_subparsers(dest="what", metavar="WHAT")
    fit_sub.required = True
    img = fit_sub.add_parser("image", help="fit an image (default: a bundled photo)",
                             description="Fit a coordinate network to an image and write a run folder.")
    img.add_argument("image", nargs="?", default=None,
                     help="PNG/JPEG/TIFF/EXR file, or a bundled photo name (astronaut, camera, coffee, ...); default astronaut")
    img.add_argument("--encoder", default="hashgrid",
                     help="hashgrid | frequency | siren | path/to/config.json (a tcnn encoding or {encoding, network})")
    img.add_argument("--steps", type=int, default=1000, help="training steps (total, also with --resume)")
    img.add_argument("--out", default="runs/image", help="run folder to write")
    img.add_argument("--batch-size", type=int, default=1 << 16, help="pixels per step (default 65536)")
    img.add_argument("--lr", type=float, default=None, help="learning rate (default per encoder)")
    img.add_argument("--crop", type=int, default=None, help="fit only the central N x N square")
    img.add_argument("--device", default="auto", help="auto | cpu | cuda")
    img.add_argument("--backend", default="auto", choices=("auto", "torch", "tcnn"), help="grid implementation")
    img.add_argument("--seed", type=int, default=0)
    img.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    img.add_argument("--checkpoint-every", type=int, default=250)
    img.add_argument("--quiet", action="store_true", help="no progress bar")
    img.set_defaults(func=_cmd_fit_image)

    geo = fit_sub.add_parser("geo", help="fit points on the globe (default: land/ocean, offline)",
                             description="Fit a location encoder + network to labelled points on the sphere "
                                         "(lon/lat in degrees) and write a run folder with metrics.json and map.png.")
    geo.add_argument("data", nargs="?", default=None,
                     help="CSV or GeoJSON of points; default: 5000 random points labelled land/ocean (global-land-mask)")
    geo.add_argument("--lon", default="lon", help="longitude column (default lon; also matches lng/longitude)")
    geo.add_argument("--lat", default="lat", help="latitude column (default lat; also matches latitude)")
    geo.add_argument("--target", default=None, help="column to predict (default: the only other column)")
    geo.add_argument("--task", default=None, choices=("classify", "regress"),
                     help="default: regress for numbers other than 0/1, classify otherwise")
    geo.add_argument("--encoder", default="sh",
                     help="sh | direct | wrap | grid | theory | spherec | spherec+ | spherem | spherem+ | cartesian3d "
                          "| path/to/config.json")
    geo.add_argument("--L", type=int, default=10, help="spherical-harmonic bands for --encoder sh (L*L features)")
    geo.add_argument("--frequency-num", type=int, default=16, help="scales of grid / theory / sphere* encoders")
    geo.add_argument("--network", default="siren", choices=("siren", "mlp", "linear"))
    geo.add_argument("--hidden", type=int, default=64, help="units per hidden layer")
    geo.add_argument("--layers", type=int, default=2, help="hidden layers (SIREN: sine layers, as in the paper)")
    geo.add_argument("--steps", type=int, default=1000, help="optimisation steps (total, also with --resume)")
    geo.add_argument("--batch-size", type=int, default=2000, help="points per step")
    geo.add_argument("--lr", type=float, default=1e-3)
    geo.add_argument("--weight-decay", type=float, default=0.0, help="Adam L2 penalty on the network")
    geo.add_argument("--val-fraction", type=float, default=0.2, help="share of points held out for validation")
    geo.add_argument("--seed", type=int, default=0, help="seeds the split, the init and the batches")
    geo.add_argument("--n-points", type=int, default=5000, help="points of the default land/ocean data")
    geo.add_argument("--out", default="runs/geo", help="run folder to write")
    geo.add_argument("--device", default="auto", help="auto | cpu | cuda")
    geo.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    geo.add_argument("--checkpoint-every", type=int, default=250)
    geo.add_argument("--quiet", action="store_true", help="no progress bar")
    geo.set_defaults(func=_cmd_fit_geo)
    return p


def main(argv: list[str] | None = None) -> int:
    from fieldstudio.errors import FieldStudioError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except FieldStudioError as exc:
        print(f"fieldstudio: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fieldstudio: stopped; the last checkpoint is kept (continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
