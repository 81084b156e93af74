"""``fieldstudio``: the command line. Each subcommand parses its flags and calls one library function.

User errors (`FieldStudioError`) print one line and exit with status 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
from pathlib import Path
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
                        checkpoint_every=args.checkpoint_every, progress=not args.quiet, backend=args.backend,
                        budget=args.budget, cam=args.cam, precision=args.precision)
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


def _cmd_fit_sdf(args) -> int:
    from .fit_sdf import fit_sdf

    m = fit_sdf(args.mesh, encoder=args.encoder, steps=args.steps, out=args.out, loss=args.loss, eikonal=args.eikonal,
                normal_weight=args.normal_weight, batch_size=args.batch_size, lr=args.lr, n_samples=args.samples,
                resolution=args.resolution, narrow_band=not args.dense, metric_samples=args.metric_samples,
                iou_resolution=args.iou_resolution, preview_size=args.preview_size, device=args.device, seed=args.seed,
                resume=args.resume, checkpoint_every=args.checkpoint_every, progress=not args.quiet,
                backend=args.backend)
    print(f"IoU {m['iou']:.4f}  Chamfer-L1 {m['chamfer_l1']:.3g}  normal consistency {m['normal_consistency']:.4f}  "
          f"F@0.005 {m['f_score@0.005']:.4f}  {m['params']:,} params  {m['steps']} steps in {m['seconds']:.1f} s  "
          f"->  {args.out}")
    return 0


def _cmd_render_sdf(args) -> int:
    from .fit_sdf import render_run

    path = render_run(args.run, args.out, size=args.size, truth=not args.no_truth, device=args.device)
    print(f"wrote {path}")
    return 0


def _cmd_export_mesh(args) -> int:
    from fieldstudio import runs

    if runs.read_json(Path(args.run) / runs.CONFIG, "run config").get("kind") == "scene":
        from .render_scene import export_scene_mesh

        info = export_scene_mesh(args.run, resolution=args.resolution, out=args.out, threshold=args.threshold,
                                 device=args.device)
        print(f"wrote {info['out']}: {info['vertices']:,} vertices, {info['faces']:,} faces (density {args.threshold})")
        return 0
    from .fit_sdf import export_run_mesh

    info = export_run_mesh(args.run, args.out, resolution=args.resolution, units=args.units,
                           narrow_band=not args.dense, device=args.device)
    print(f"wrote {info['path']}: {info['vertices']:,} vertices, {info['faces']:,} faces "
          f"({args.resolution}^3 marching cubes in {info['seconds']:.1f} s)")
    return 0


def _cmd_app(args) -> int:
    from .studio.app import serve

    serve(args.host, args.port, max_jobs=args.max_jobs, max_queued=args.max_queued,
          max_upload_mb=args.max_upload_mb, workdir=args.workdir, share=args.share)
    return 0


def _add_training_flags(parser, checkpoint_every: int, seed_help: str | None = None) -> None:
    """The flags every training command shares: device, seed, resume, checkpoints, progress bar."""
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--seed", type=int, default=0, help=seed_help)
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--checkpoint-every", type=int, default=checkpoint_every)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fieldstudio", description="Neural fields on any machine.")
    from fieldstudio import __version__

    p.add_argument("--version", action="version", version=f"fieldstudio {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    info = sub.add_parser("info", help="versions, device and optional backends")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=_cmd_info)

    from .cameras import add_parser as _add_cameras_parser

    _add_cameras_parser(sub)

    from .video import add_parser as _add_video_parser
    from .distill import add_parser as _add_distill_parser

    _add_distill_parser(sub)

    _add_video_parser(sub)

    fit = sub.add_parser("fit", help="fit a field to data")
    fit_sub = fit.add_subparsers(dest="what", metavar="WHAT")
    fit_sub.required = True
    img = fit_sub.add_parser("image", help="fit an image (default: a bundled photo)",
                             description="Fit a coordinate network to an image and write a run folder.")
    img.add_argument("image", nargs="?", default=None,
                     help="PNG/JPEG/TIFF/EXR file, or a bundled photo name (astronaut, camera, coffee, ...); default astronaut")
    img.add_argument("--encoder", default="hashgrid",
                     help="hashgrid | frequency | siren | neurbf | neurbf-nosine | ffn | path/to/config.json "
                          "(a tcnn encoding or {encoding, network})")
    img.add_argument("--cam", action="store_true",
                     help="coordinate-aware modulation of every hidden layer (with --encoder ffn)")
    img.add_argument("--steps", type=int, default=1000, help="training steps (total, also with --resume)")
    img.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                     help="bf16: the network runs in bfloat16 autocast (the grid, the loss and Adam stay float32); "
                          "about 1.2x faster on CPUs with bf16 units, same steps to 30 dB")
    img.add_argument("--out", default="runs/image", help="run folder to write")
    img.add_argument("--batch-size", type=int, default=None,
                     help="pixels per step (default 65536 on a GPU, 16384 on a CPU)")
    img.add_argument("--lr", type=float, default=None,
                     help="learning rate (default per encoder; hashgrid on a CPU 0.02)")
    img.add_argument("--budget", type=int, default=None,
                     help="resize the field to at most N parameters (hash table size, or network width)")
    img.add_argument("--crop", type=int, default=None, help="fit only the central N x N square")
    img.add_argument("--backend", default="auto", choices=("auto", "torch", "tcnn"), help="grid implementation")
    _add_training_flags(img, checkpoint_every=250)
    img.set_defaults(func=_cmd_fit_image)

    sdf = fit_sub.add_parser("sdf", help="fit a signed distance field to a mesh (default: a bundled shape)",
                             description="Fit a neural signed distance field to a triangle mesh, extract its surface "
                                         "and write a run folder with metrics.json, mesh.ply and preview.png.")
    sdf.add_argument("mesh", nargs="?", default=None,
                     help="OBJ / PLY / STL / OFF / GLB file; default: a procedural shape (ring, ball and stick)")
    sdf.add_argument("--encoder", default="hashgrid",
                     help="hashgrid | siren | frequency | neurbf | path/to/config.json (a tcnn encoding or {encoding, network})")
    sdf.add_argument("--steps", type=int, default=1000, help="training steps (total, also with --resume)")
    sdf.add_argument("--out", default="runs/sdf", help="run folder to write")
    sdf.add_argument("--loss", default=None, choices=("mape", "l1"),
                     help="data term (default: mape, instant-ngp's, for grids; l1 for siren)")
    sdf.add_argument("--eikonal", type=float, default=0.0, help="weight of the eikonal term | |grad f| - 1 | (SIREN: 0.05)")
    sdf.add_argument("--normal-weight", type=float, default=0.0, help="weight of the normal term on surface points")
    sdf.add_argument("--batch-size", type=int, default=1 << 14, help="points per step (default 16384)")
    sdf.add_argument("--samples", type=int, default=1 << 19, help="training points drawn once with ground truth")
    sdf.add_argument("--lr", type=float, default=None, help="learning rate (default per encoder)")
    sdf.add_argument("--resolution", type=int, default=256, help="marching cubes samples per axis (default 256)")
    sdf.add_argument("--dense", action="store_true", help="evaluate the full grid, not only a band around the surface")
    sdf.add_argument("--metric-samples", type=int, default=200_000, help="surface samples per mesh for Chamfer & co.")
    sdf.add_argument("--iou-resolution", type=int, default=128, help="grid of cell centres for the IoU (default 128)")
    sdf.add_argument("--preview-size", type=int, default=320, help="pixels per side of each preview.png panel")
    sdf.add_argument("--backend", default="auto", choices=("auto", "torch", "tcnn"), help="grid implementation")
    _add_training_flags(sdf, checkpoint_every=250)
    sdf.set_defaults(func=_cmd_fit_sdf)

    rsdf = sub.add_parser("render-sdf", help="sphere-traced picture of an SDF run (ground truth beside it)")
    rsdf.add_argument("run", help="run folder written by `fieldstudio fit sdf`")
    rsdf.add_argument("--out", default=None, help="PNG to write (default RUN/render.png)")
    rsdf.add_argument("--size", type=int, default=512, help="pixels per side of each panel")
    rsdf.add_argument("--no-truth", action="store_true", help="only the fitted field")
    rsdf.add_argument("--device", default="auto", help="auto | cpu | cuda")
    rsdf.set_defaults(func=_cmd_render_sdf)

    exp = sub.add_parser("export-mesh", help="marching cubes of an SDF or scene run as PLY / OBJ / GLB")
    exp.add_argument("run", help="run folder written by `fieldstudio fit sdf` or `fieldstudio reconstruct`")
    exp.add_argument("--threshold", type=float, default=10.0, help="scene runs: density of the extracted surface")
    exp.add_argument("--out", default="mesh.ply", help="mesh file to write (.ply, .obj or .glb)")
    exp.add_argument("--resolution", type=int, default=256, help="samples per axis (512 fits in memory)")
    exp.add_argument("--units", default="original", choices=("original", "unit"),
                     help="original: the input mesh's units; unit: the [0,1]^3 cube the field lives in")
    exp.add_argument("--dense", action="store_true", help="evaluate the full grid, not only a band around the surface")
    exp.add_argument("--device", default="auto", help="auto | cpu | cuda")
    exp.set_defaults(func=_cmd_export_mesh)

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
    geo.add_argument("--n-points", type=int, default=5000, help="points of the default land/ocean data")
    geo.add_argument("--out", default="runs/geo", help="run folder to write")
    _add_training_flags(geo, checkpoint_every=250, seed_help="seeds the split, the init and the batches")
    geo.set_defaults(func=_cmd_fit_geo)
    rec = sub.add_parser("reconstruct", help="radiance field from posed photos (default: a bundled scene)",
                         description="Train a radiance field (Instant-NGP or MLP NeRF) on posed photos with the "
                                     "occupancy-grid volume renderer; evaluates the test views at the end.")
    rec.add_argument("data", nargs="?", default=None,
                     help="scene folder (Blender, instant-ngp/nerfstudio transforms.json, LLFF, COLMAP); default: the procedural scene")
    rec.add_argument("--format", default="auto", help="auto | blender | ngp | llff | colmap")
    rec.add_argument("--field", default="ngp", choices=("ngp", "nerf", "tensorf", "voxels"),
                     help="Instant-NGP hash grid, MLP NeRF, TensoRF VM or a voxel grid")
    rec.add_argument("--encoder", default="hashgrid", choices=("hashgrid", "neurbf"),
                     help="position encoding of the ngp field; neurbf places its kernels after a short warm-up fit")
    rec.add_argument("--warmup-steps", type=int, default=None, help="warm-up steps before placing NeuRBF kernels")
    rec.add_argument("--cam", action="store_true",
                     help="coordinate-aware modulation of the ngp density MLP by a view-direction grid")
    rec.add_argument("--steps", type=int, default=2000)
    rec.add_argument("--out", default="runs/scene")
    rec.add_argument("--target-samples", type=int, default=None,
                     help="samples rendered per step, the ray count adapts (default 2^16 on GPU, 2^15 on CPU)")
    rec.add_argument("--lr", type=float, default=None)
    rec.add_argument("--downscale", type=int, default=1)
    rec.add_argument("--grid-resolution", type=int, default=None, help="occupancy grid cells per axis (128 on GPU, 64 on CPU)")
    rec.add_argument("--eval-views", type=int, default=None, help="evaluate only the first N test views")
    rec.add_argument("--backend", default="auto", choices=("auto", "torch", "tcnn"))
    rec.add_argument("--fit-box-at", type=int, default=None,
                     help="tensorf / voxels: the step at which the grid shrinks to the occupied box (default 500; 0: never)")
    _add_training_flags(rec, checkpoint_every=500)
    rec.set_defaults(func=_cmd_reconstruct)

    ren = sub.add_parser("render", help="render a reconstructed scene to a video (rgb, depth, opacity)")
    ren.add_argument("run", help="run folder written by `fieldstudio reconstruct`")
    ren.add_argument("--path", default="orbit", choices=("orbit", "test"))
    ren.add_argument("--frames", type=int, default=60)
    ren.add_argument("--fps", type=int, default=24)
    ren.add_argument("--out", default="video.mp4", help=".mp4 / .gif, or a folder for PNG frames")
    ren.add_argument("--no-depth", action="store_true", help="skip the depth and opacity videos")
    ren.add_argument("--device", default="auto")
    ren.add_argument("--quiet", action="store_true")
    ren.set_defaults(func=_cmd_render)

    app = sub.add_parser("app", help="the Gradio studio in the browser (needs the app extra)",
                         description="Serve the studio: fit, race and inspect fields in the browser. Long work runs "
                                     "in background jobs; nothing is sent outside the machine.")
    app.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    app.add_argument("--port", type=int, default=7860)
    app.add_argument("--max-jobs", type=int, default=2, help="jobs that run at once")
    app.add_argument("--max-queued", type=int, default=8, help="jobs that may wait; more are refused")
    app.add_argument("--max-upload-mb", type=float, default=200.0, help="largest upload (and unpacked zip)")
    app.add_argument("--workdir", default=None, help="folder for the runs (default: a new temporary folder)")
    app.add_argument("--share", action="store_true", help="ask gradio for a public share link (off by default)")
    app.set_defaults(func=_cmd_app)
    return p


def _cmd_reconstruct(args) -> int:
    from .reconstruct import reconstruct

    m = reconstruct(args.data, format=args.format, field=args.field, steps=args.steps, out=args.out,
                    target_samples=args.target_samples, lr=args.lr, downscale=args.downscale,
                    grid_resolution=args.grid_resolution, eval_views=args.eval_views, device=args.device,
                    backend=args.backend, seed=args.seed, resume=args.resume, checkpoint_every=args.checkpoint_every,
                    progress=not args.quiet, encoder=args.encoder, warmup_steps=args.warmup_steps, cam=args.cam,
                    fit_box_at=args.fit_box_at)
    print(f"test PSNR {m['psnr']:.2f} dB  SSIM {m['ssim']:.4f} over {m['test_views']} views  {m['steps']} steps in "
          f"{m['seconds']:.1f} s  train {m['train_rays_per_second']:,.0f} rays/s  ->  {args.out}")
    return 0


def _cmd_render(args) -> int:
    from .render_scene import render_video

    info = render_video(args.run, path=args.path, frames=args.frames, out=args.out, fps=args.fps,
                        device=args.device, depth=not args.no_depth, progress=not args.quiet)
    print("wrote " + ", ".join(info["outputs"]))
    return 0


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
