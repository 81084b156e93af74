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
