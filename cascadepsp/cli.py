"""The ``cascadepsp`` command: ``refine`` a folder, ``refine-coco`` a COCO file, ``info``, ``download-official``,
``convert-official``.

Only the standard library is imported up front, so ``--help`` and argument errors answer at once; torch and
the model code are imported by the command that needs them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

REFINE_EPILOG = """outputs (sub-folders of the input are kept):
  INPUT (original layout)   OUT/<name>_mask.png     refined mask, the size of <name>_seg
  IMAGES MASKS              OUT/<stem>.png          refined mask, the size of the mask
  --overlay                 OUT/<name>_overlay.jpg  image | coarse | refined
  --report R.csv|R.json     one row per image: status, size, seconds, changed fraction (+ IoU/mBA with --gt)
  masks are soft 0-255 PNGs (0/255 with --threshold; label maps stored like the input with --labels)

exit codes:
  0    every image done or skipped (outputs already complete)
  1    some images failed (listed; the others are written)
  2    usage error: bad option, no inputs found, unreadable --weights, output inside an input folder
  130  interrupted (finished outputs are complete; rerun the same command to continue)
"""


COCO_EPILOG = """output: ANNOTATIONS as it was (ids, order, categories, scores, extra keys, iscrowd annotations)
  except each refined annotation's segmentation (compressed RLE with counts as a string, or polygons with
  --polygons), area and bbox. Annotations that fail (unreadable photo, malformed segmentation) are listed
  on stderr and written unchanged. OUT.partial holds finished images while running; rerunning the same
  command carries on from it (--no-resume starts over); it is removed at the end.

exit codes:
  0    every annotation refined (or iscrowd, untouched)
  1    some annotations failed (listed; the output is written)
  2    usage error: bad option, malformed file, missing pycocotools, --out or --report an input
  130  interrupted (rerun the same command to continue)
"""


class RenamedOption(argparse.Action):
    """An option that was renamed: one line naming the new spelling, exit 2."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str = "", **kwargs: object) -> None:
        self.new = new
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        print(f"{parser.prog}: error: {option_string} was renamed {self.new}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


class _TqdmHandler(logging.Handler):
    """Log lines that do not break the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


def _setup_logging(verbose: bool) -> None:
    logger = logging.getLogger("cascadepsp")
    if not any(isinstance(h, _TqdmHandler) for h in logger.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.propagate = False


def _threshold(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a value in [0, 1], got {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _add_refiner_options(p: argparse.ArgumentParser) -> None:
    """The options that choose the network and how it runs, shared by the commands that refine."""
    p.add_argument("--fast", action="store_true", help="global step only (faster, less detail)")
    p.add_argument("--L", type=int, default=900, help="global-step long side and local window size (default 900)")
    p.add_argument("--device", help="torch device, e.g. cpu, cuda, cuda:1 (default: CUDA when available)")
    p.add_argument("--weights", default="default",
                   help="'default' (bundled), 'official', or a path to .safetensors / the official checkpoint")
    p.add_argument("--engine", choices=["batched", "reference"], default="batched",
                   help="batched (windows in batches, bounded memory; default) or reference (the original's "
                        "exact one-window loop). Not --fast, which skips the local step")
    _add_backend_options(p)


def _add_backend_options(p: argparse.ArgumentParser) -> None:
    """--backend, --precision, --second-pass-iou and --local-step (refine, refine-coco, serve)."""
    from .constants import BACKENDS, LOCAL_STEPS, PRECISIONS

    p.add_argument("--backend", choices=BACKENDS, default="torch",
                   help="torch (default) or openvino (CPU; needs cascadepsp[openvino]; converts once per machine "
                        "into $CASCADEPSP_HOME/openvino)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="network precision. auto: bf16 on CUDA, fp32 on CPU (with --backend openvino: bf16 "
                        "on CPUs with bf16 instructions, else fp32); bf16 on a CPU needs bf16 instructions; "
                        "int8 needs --backend openvino and cascadepsp[int8] (quantised once per machine); see "
                        "the README's speed table")
    p.add_argument("--second-pass-iou", type=float, default=None, metavar="IOU",
                   help="refine again where the first pass changed the mask by an IoU below this (weak masks gain, "
                        "at twice the time on them; default: the weights' setting, off for the bundled file)")
    p.add_argument("--local-step", choices=LOCAL_STEPS, default=None,
                   help="how full-resolution windows run: two_pass (the original) or light (faster on large photos, "
                        "at a quality cost: see the README; default: the weights' setting, two_pass for the bundled "
                        "file)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cascadepsp", description="CascadePSP mask refinement.")
    parser.add_argument("--version", action="version", version=f"cascadepsp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    r = sub.add_parser("refine", help="refine every mask in a folder", epilog=REFINE_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Refine coarse masks. INPUT alone: one folder in the original layout "
                                   "(<name>_im.jpg|png + <name>_seg.png [+ <name>_gt.png]); INPUT MASKS: an image "
                                   "folder and a mask folder matched by relative path and file stem (recursive).")
    r.add_argument("inputs", nargs="+", metavar="INPUT", help="INPUT, or IMAGES MASKS")
    r.add_argument("--out", required=True, help="output folder (must be outside every input folder)")
    r.add_argument("--gt", help="ground-truth folder matched like the masks (adds IoU / mBA to the report)")
    _add_refiner_options(r)
    r.add_argument("--mode", action=RenamedOption, new="--engine (batched|reference; 'fast' is now 'batched')")
    r.add_argument("--batch-size", type=_positive, help="windows per model call (default: automatic)")
    r.add_argument("--threads", type=_positive, help="CPU threads for torch (default: torch's choice)")
    r.add_argument("--threshold", type=_threshold, nargs="?", const=0.5, default=None, metavar="T",
                   help="write binary 0/255 masks (probability >= T, default 0.5) instead of soft 0-255 masks")
    r.add_argument("--labels", action="store_true",
                   help="masks are label maps: refine each id separately and write a label map back")
    r.add_argument("--overlay", action="store_true",
                   help="also write <name>_overlay.jpg: image | coarse | refined, side by side")
    r.add_argument("--report", help="write a per-image report: a .csv or .json path")
    r.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="skip images whose outputs already exist and decode (default: on)")
    r.add_argument("--limit", type=_positive, help="process only the first N images (sorted by name)")
    r.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    r.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run on a Ray Data actor pool: a local Ray instance, or the cluster at ADDRESS "
                        "('auto', 'ray://head:10001'); inputs and --out must be on storage every node sees")
    r.add_argument("--ray-actors", type=_positive, help="actors (default: one per GPU, else CPUs / 2)")
    r.add_argument("--ray-cpus-per-actor", type=float, help="CPUs (and torch threads) per actor (default: 2, "
                   "1 with GPUs)")
    r.add_argument("--ray-gpus-per-actor", type=float, help="GPUs per actor (default: 1 when the cluster has GPUs)")
    r.add_argument("-v", "--verbose", action="store_true", help="also log informational messages")

    k = sub.add_parser("refine-coco", help="refine every instance of a COCO annotation file",
                       epilog=COCO_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Refine the instance masks of a COCO dataset file (images + annotations + "
                                   "categories) or results file (a list of {image_id, category_id, segmentation, "
                                   "score}; needs --images-json). Each instance is refined inside its box "
                                   "enlarged by --context on every side.")
    k.add_argument("images", metavar="IMAGES", help="folder of the photos (file_name is relative to it)")
    k.add_argument("annotations", metavar="ANNOTATIONS", help="COCO dataset or results .json")
    k.add_argument("--out", required=True, help="output .json (never an input file; written atomically)")
    k.add_argument("--images-json", help="COCO file with the images' ids, names and sizes (for a results file)")
    k.add_argument("--polygons", action="store_true",
                   help="write polygons instead of compressed RLE (holes are filled; empty masks stay RLE)")
    k.add_argument("--gt", help="ground-truth COCO dataset file: adds per-instance IoU / mBA to --report")
    k.add_argument("--report", help="per-annotation report (.csv)")
    k.add_argument("--context", type=float, default=0.25,
                   help="share of the instance's box added on every side of its crop (default 0.25)")
    k.add_argument("--threshold", type=_threshold, default=0.5, metavar="T",
                   help="foreground where the refined probability >= T (default 0.5)")
    _add_refiner_options(k)
    k.add_argument("--threads", type=_positive, help="CPU threads for torch (default: torch's choice)")
    k.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="carry on from OUT.partial left by an interrupted run with the same inputs (default: on)")
    k.add_argument("--checkpoint-every", type=_positive, default=20, metavar="N",
                   help="rewrite OUT.partial every N images (default 20)")
    k.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    k.add_argument("-v", "--verbose", action="store_true", help="also log informational messages")

    i = sub.add_parser("info", help="show the version, named weights and devices")
    i.set_defaults(progress=False)

    d = sub.add_parser("download-official", help="download the original CascadePSP checkpoint (259 MB)")
    d.add_argument("--dest", help="where to save it (default: $CASCADEPSP_HOME/official/model)")
    d.add_argument("--force", action="store_true", help="download even when a valid copy exists")

    c = sub.add_parser("convert-official", help="convert the official checkpoint to .safetensors")
    c.add_argument("src", help="official torch checkpoint")
    c.add_argument("dst", help="output .safetensors path")
    c.add_argument("--half", action="store_true", help="store float16 weights")

    e = sub.add_parser("export-onnx", help="export the network as ONNX with dynamic height and width",
                       description="Export the refinement network to ONNX (opset 17, dynamic batch / height / "
                                   "width; sizes must be multiples of 8). global: image [N,3,H,W] (ImageNet-"
                                   "normalised RGB) + mask [N,1,H,W] in [-1,1] -> pred_os8, pred_os4, pred_os1 "
                                   "(probabilities of the three-pass cascade). window: also inter_os4 [N,1,H,W] "
                                   "-> pred_os1 (the local step).")
    e.add_argument("out", help="output .onnx path")
    e.add_argument("--weights", default="default",
                   help="'default' (bundled), 'official', or a path to .safetensors / the official checkpoint")
    e.add_argument("--graph", choices=["global", "window"], default="global")
    v = sub.add_parser("serve", help="serve refinement over HTTP with a web page (needs cascadepsp[serve])",
                       description="HTTP refinement service (FastAPI + uvicorn): POST /v1/refine, "
                                   "/v1/refine-instances, GET /health, a web page at /, API docs at /docs. "
                                   "SIGTERM or Ctrl-C finishes the requests in flight, then exits. See docs/serve.md.")
    v.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    v.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    v.add_argument("--weights", default="default",
                   help="'default' (bundled), 'official', or a path to .safetensors / the official checkpoint")
    _add_backend_options(v)
    v.add_argument("--device", help="torch device (default: CUDA when available)")
    v.add_argument("--max-pixels", type=_positive, default=25_000_000,
                   help="largest photo in pixels, checked from its header (default 25000000); larger: 413")
    v.add_argument("--max-upload-mb", type=float, default=50.0, help="largest request body in MiB (default 50); "
                   "larger: 413 before the body is read")
    v.add_argument("--workers", type=_positive, default=1, help="worker processes, each with one Refiner (default 1)")
    v.add_argument("--queue-size", type=int, default=16, help="requests that may wait per worker while one is "
                   "refined (default 16); more: 503")
    v.add_argument("--threads", type=_positive, help="torch threads per worker (default: CPUs / workers)")
    v.add_argument("--max-L", dest="max_L", type=_positive, default=2048, help="largest L a request may ask for")
    v.add_argument("--max-instances", type=_positive, default=100, help="annotations per refine-instances request")
    v.add_argument("--graceful-timeout", type=float, default=300.0,
                   help="seconds SIGTERM waits for requests in flight (default 300)")
    return parser


def _cmd_serve(args: argparse.Namespace) -> int:
    from .serve import run_cli

    return run_cli(args)


def _cmd_refine(args: argparse.Namespace) -> int:
    from .jobs.folder import refine_folder
    from .jobs.pairing import find_jobs

    _setup_logging(args.verbose)
    find_jobs(args.inputs, args.out, args.gt)  # inputs and output folder first: before the weights are loaded
    if args.ray is not None:
        return _cmd_refine_ray(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from .inference.refiner import Refiner

    refiner = Refiner(device=args.device, weights=args.weights, engine=args.engine, batch_size=args.batch_size,
                      precision=args.precision, backend=args.backend, second_pass_iou=args.second_pass_iou,
                      local_step=args.local_step)
    return _run_folder(args, lambda on_row: refine_folder(
        args.inputs, args.out, refiner=refiner, gt=args.gt, fast=args.fast,
        L=args.L, threshold=args.threshold, labels=args.labels, overlay=args.overlay, resume=args.resume,
        limit=args.limit, report=args.report, progress=args.progress, on_row=on_row))


def _run_folder(args: argparse.Namespace, run: Callable[[Callable[[Any], None]], Any]) -> int:
    """Run a folder refinement (``run(on_row)``), count its rows for the interrupt message, print its summary,
    notes and failures; the exit code."""
    seen: list[str] = []
    try:
        summary = run(lambda row: seen.append(row.status))
    except KeyboardInterrupt:
        print(f"interrupted after {len(seen)} images: done {seen.count('done')}, skipped {seen.count('skipped')}, "
              f"failed {seen.count('failed')}", file=sys.stderr)
        raise
    print(summary.line())
    no_fg = [row.name for row in summary.rows if "use --labels" in row.note]
    if no_fg:
        print(f"  note: {len(no_fg)} mask(s) have values but no foreground (>= 128), e.g. {no_fg[0]}; "
              "label maps? rerun with --labels")
    failed = summary.failed
    for row in failed[:50]:
        print(f"  failed: {row.name}: {row.error}")
    if len(failed) > 50:
        print(f"  ... and {len(failed) - 50} more" + (f" (see {args.report})" if args.report else ""))
    if args.report:
        print(f"report: {args.report}")
    return EXIT_FAILED if failed else EXIT_OK


def _cmd_refine_ray(args: argparse.Namespace) -> int:
    from .jobs.distributed import refine_dataset

    if args.threads:
        raise ValueError("--threads does not apply with --ray; use --ray-cpus-per-actor")
    if args.device:
        raise ValueError("--device does not apply with --ray; actors use GPUs when the cluster has them "
                         "(--ray-gpus-per-actor)")
    return _run_folder(args, lambda on_row: refine_dataset(
        args.inputs, args.out, address=None if args.ray == "local" else args.ray, actors=args.ray_actors,
        cpus_per_actor=args.ray_cpus_per_actor, gpus_per_actor=args.ray_gpus_per_actor, weights=args.weights,
        engine=args.engine, batch_size=args.batch_size, precision=args.precision, backend=args.backend,
        second_pass_iou=args.second_pass_iou, local_step=args.local_step, gt=args.gt, fast=args.fast, L=args.L,
        threshold=args.threshold, labels=args.labels, overlay=args.overlay, resume=args.resume, limit=args.limit,
        report=args.report,
        progress=args.progress, on_row=on_row))


def _cmd_refine_coco(args: argparse.Namespace) -> int:
    from .inference.refiner import check_L
    from .instances.coco import mask_api
    from .instances.refine import check_context
    from .jobs.coco_file import CocoOptions, check_paths, load_inputs, refine_coco_file

    _setup_logging(args.verbose)
    mask_api()  # pycocotools first: before the weights are loaded
    check_paths(args.images, args.annotations, args.out, args.images_json, args.gt, args.report)
    loaded = load_inputs(args.annotations, args.images_json)  # a malformed file is refused before the weights
    options = CocoOptions(polygons=args.polygons, context=check_context(args.context), threshold=args.threshold,
                          fast=args.fast, L=check_L(args.L))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from .inference.refiner import Refiner

    refiner = Refiner(device=args.device, weights=args.weights, engine=args.engine, precision=args.precision,
                      backend=args.backend, second_pass_iou=args.second_pass_iou,
                      local_step=args.local_step)
    failures: list[str] = []

    def on_failure(line: str) -> None:
        failures.append(line)
        from tqdm import tqdm

        tqdm.write(line, file=sys.stderr)

    summary = refine_coco_file(args.images, args.annotations, args.out, refiner=refiner,
                               images_json=args.images_json, gt=args.gt, report=args.report, options=options,
                               resume=args.resume, checkpoint_every=args.checkpoint_every, progress=args.progress,
                               weights_key=f"{args.weights}|{args.engine}", on_failure=on_failure, loaded=loaded)
    print(summary.line())
    print(f"wrote {args.out}" + (f"; report: {args.report}" if args.report else ""))
    return EXIT_FAILED if summary.failed else EXIT_OK


def _cmd_info(args: argparse.Namespace) -> int:
    import torch

    from .weights.download import default_official_path
    from .weights.registry import REGISTRY, bundled_path

    print(f"cascadepsp {__version__}, torch {torch.__version__}")
    print("named weights:")
    for network, specs in REGISTRY.items():
        for name, spec in sorted(specs.items()):
            path = default_official_path() if spec.official else bundled_path(spec.filename, network)
            state = "available" if path.is_file() else "missing"
            print(f"  {network + ' ' + name:<16} {spec.description} [{state}: {path}]")
    print("devices: cpu" + "".join(f", cuda:{k} ({torch.cuda.get_device_name(k)})"
                                   for k in range(torch.cuda.device_count())))
    print(f"default device: {'cuda' if torch.cuda.is_available() else 'cpu'}")
    return EXIT_OK


def _cmd_download(args: argparse.Namespace) -> int:
    from .weights.download import download_official

    path = download_official(args.dest, force=args.force)
    print(f"official checkpoint: {path}")
    return EXIT_OK


def _cmd_convert(args: argparse.Namespace) -> int:
    from .weights.registry import convert_official

    path = convert_official(args.src, args.dst, half=args.half)
    print(f"wrote {path}")
    return EXIT_OK


def _cmd_export_onnx(args: argparse.Namespace) -> int:
    from .deploy.onnx_export import INPUT_NAMES, OUTPUT_NAMES, export_onnx
    from .weights.registry import load_model

    if not args.out.endswith(".onnx"):
        raise ValueError(f"out: expected a path ending in .onnx, got {args.out}")
    path = export_onnx(load_model(args.weights), args.out, args.graph)
    print(f"wrote {path} ({args.graph} graph: {', '.join(INPUT_NAMES[args.graph])} -> "
          f"{', '.join(OUTPUT_NAMES[args.graph])})")
    return EXIT_OK


COMMANDS = {"refine": _cmd_refine, "refine-coco": _cmd_refine_coco, "info": _cmd_info, "download-official": _cmd_download,
            "convert-official": _cmd_convert, "export-onnx": _cmd_export_onnx, "serve": _cmd_serve}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cascadepsp`` command; returns the exit code (0 ok, 1 some images failed, 2 usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted; finished outputs are complete, rerun the same command to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, FileNotFoundError, OSError, RuntimeError, ImportError) as e:
        print(f"cascadepsp {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
