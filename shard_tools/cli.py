"""The `shard-videos` command: shard a collection, verify shards, or generate a synthetic collection.

    shard-videos INPUT OUT [options]     videos -> WebDataset shards (ARCHITECTURE.md section 1)
    shard-videos verify OUT              decode every sample of every shard, report failures
    shard-videos synth OUT [options]     write a synthetic labelled collection (folder per class; digits: a list)
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from pipeline.errors import first_line, run_command
from pipeline.frames import JPEG
from shard_tools.build import RunConfig, build
from shard_tools.encode import CODECS
from shard_tools.inputs import InputError
from shard_tools.digits import INSTALL_HINT as DIGITS_INSTALL_HINT
from shard_tools.digits import LABELS as DIGIT_LABELS
from shard_tools.digits import LISTING, load_digits, make_digits
from shard_tools.synthetic import MOTIONS, PRESETS, make_collection
from shard_tools.transcode import REJECT_KINDS, Settings

DESCRIPTION = """\
Turn a video collection into WebDataset tar shards for the DALI pipeline: per clip the video (transcoded, audio
dropped) or, with --frames jpeg, its frames as JPEG images in one member; a .json of metadata and the frame count
and label as 4-byte integers; per shard a DALI index; a manifest.json and a rejected.jsonl. Bad inputs are left
out with a reason, never stop the run.

Inputs:
  a folder per class       INPUT/<class>/<clip>.avi|mp4|...        (split 'train'; --val-fraction splits off 'val')
  an unlabelled folder     videos directly in INPUT, or --unlabelled  (split 'all', label -1)
  UCF101                   --labels ucfTrainTestlist/ (classInd.txt, trainlist0N.txt, testlist0N.txt; --split-id N)
  HMDB51                   --labels testTrainMulti_7030_splits/ (<class>_test_splitN.txt; 1 train, 2 test, 0 unused)
  Kinetics                 --labels train.csv, or a folder of the CSVs; files <youtube_id>_<start:06d>_<end:06d>.mp4
  Something-Something V2   --labels labels/ (labels.json, train.json, validation.json, test.json); files <id>.webm
  a list                   INPUT or --labels list.csv|.tsv with rows path,label (header optional; optional split column)

Other commands: `shard-videos verify OUT` decodes every sample; `shard-videos synth OUT` writes a synthetic
collection (see `shard-videos synth --help`).
"""


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parse_size(text: str) -> int:
    """'1GB' -> 10**9, '512MiB' -> 512 * 2**20, '1000' -> 1000."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected e.g. 1GB, 500MB, 256MiB or a number of bytes")
    number, unit, binary = match.groups()
    return int(float(number) * (1024 if binary else 1000) ** " kmgt".index(unit or " "))


def positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def shard_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shard-videos", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="folder of videos, or a CSV/TSV list of path,label")
    parser.add_argument("out", help="output folder (created; must be empty unless --resume or --overwrite)")
    source = parser.add_argument_group("labels and splits")
    source.add_argument("--labels", help="label/split file or folder (UCF101, HMDB51, Kinetics, SSv2, path,label list)")
    source.add_argument("--split-id", type=int, default=1, choices=(1, 2, 3), help="UCF101/HMDB51 split (default 1)")
    source.add_argument("--unlabelled", action="store_true", help="take every video under INPUT, without labels")
    source.add_argument("--val-fraction", type=float, default=0.0,
                        help="for collections without splits: put this seeded fraction of each class in 'val'")
    source.add_argument("--skip-missing", action="store_true",
                        help="videos a label file names but that do not exist go to rejected.jsonl instead of "
                             "stopping the run (Kinetics downloads usually miss some)")
    video = parser.add_argument_group("video")
    video.add_argument("--codec", default=None, choices=(*CODECS, "copy"),
                       help="h264 (default; decoded by NVDEC on the GPU), hevc, mpeg4, vp9 or mjpeg (vp9 and mjpeg "
                            "also decode on the CPU in DALI), or copy (keep the source stream and container, drop "
                            "audio)")
    video.add_argument("--frames", choices=(JPEG,), default=None,
                       help="store each clip as JPEG frames instead of video (one member of concatenated JPEGs; "
                            "decoded in one batched call per step, with no decoding from the clip's start; several "
                            "times the bytes of H.264)")
    video.add_argument("--quality", type=positive(int), default=None, help="--frames: JPEG quality (default 90)")
    video.add_argument("--frame-step", type=positive(int), default=None,
                       help="--frames: keep every S-th frame (default 1); S must divide the sampling rates you "
                            "will train with, the loader refuses others")
    video.add_argument("--short-side", type=positive(int), default=None,
                       help="resize so the short side is about this many pixels, never upscale; sides are rounded "
                            "to multiples of 16 (default 320)")
    video.add_argument("--fps", type=positive(float), default=None, help="cap on the frame rate (default: keep)")
    video.add_argument("--gop", type=positive(int), default=None,
                       help="keyframe interval in frames: a random window costs at most this many extra decodes "
                            "(default 32)")
    video.add_argument("--max-seconds", type=positive(float), default=None, help="keep at most the first this-many seconds of each clip")
    video.add_argument("--min-frames", type=positive(int), default=16,
                       help="reject clips with fewer decodable frames (default 16, one 16-frame window at stride "
                            "1; longer windows, num_frames x sampling_rate, are padded at training time)")
    run = parser.add_argument_group("run")
    run.add_argument("--shard-size", type=parse_size, default=parse_size("1GB"), help="target shard size (1GB)")
    run.add_argument("--seed", type=int, default=0, help="seed of the sample order and of --val-fraction")
    run.add_argument("--workers", type=int, default=available_cores(),
                     help="transcoding processes (default: all cores; 0 = in this process)")
    run.add_argument("--resume", action="store_true", help="continue an interrupted run into the same OUT")
    run.add_argument("--overwrite", action="store_true", help="delete the shards already in OUT first")
    run.add_argument("--verify", action="store_true", help="run `shard-videos verify OUT` afterwards")
    run.add_argument("--debug", action="store_true", help="show tracebacks of expected errors")
    return parser


def synth_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shard-videos synth",
        description="Write a synthetic labelled video collection. The motion presets write "
                    f"OUT/<class>/<class>_NNN.<ext>: the class is the motion of the main object ({', '.join(m.name for m in MOTIONS)}; --classes N "
                    f"takes the first N); shapes, colours, textures and backgrounds are random per clip. The digits "
                    f"preset writes moving handwritten digits (scikit-learn's 1,797 bundled digits; needs "
                    f"{DIGITS_INSTALL_HINT}), split by digit image into train / val / test, and OUT/{LISTING} listing "
                    f"every clip with its split, digit image and motion: shard it with `shard-videos OUT/{LISTING} "
                    f"SHARDS` (shard_tools/digits.py).")
    parser.add_argument("out")
    parser.add_argument("--preset", default="default", choices=(*sorted(PRESETS), "digits"),
                        help="study: the collection `train study` uses (right, left, clockwise, counter-clockwise; "
                             "a larger object brighter than the background; shard_tools/synthetic.py); digits: "
                             "moving handwritten digits")
    motion = parser.add_argument_group("the motion presets (default, study)")
    motion.add_argument("--held-out", action="store_true",
                        help="draw the preset's test look (other shapes, textures and backgrounds) instead of its "
                             "training look")
    motion.add_argument("--still", action="store_true",
                        help="write each clip as one of its frames repeated (the single-frame baseline)")
    motion.add_argument("--classes", type=positive(int), default=None, help="classes (default 4)")
    motion.add_argument("--clips-per-class", type=positive(int), default=None, help="clips per class (default 4)")
    digits = parser.add_argument_group("the digits preset")
    digits.add_argument("--clips-per-digit", type=positive(int), default=None,
                        help="clips per digit image, each with its own motion (default 2)")
    digits.add_argument("--label", choices=DIGIT_LABELS, default=None,
                        help="digit (10 classes, default), or direction: the direction of the motion (8 classes; "
                             "the digit then reaches no border during a clip, which allows at most 7 frames at "
                             "32x32)")
    digits.add_argument("--digits", type=positive(int), default=None,
                        help="use only this many of the 1,797 digit images (a seeded choice; default all)")
    digits.add_argument("--workers", type=int, default=None,
                        help="encoding processes (default: all cores; 0 = in this process)")
    video = parser.add_argument_group("video")
    video.add_argument("--frames", type=positive(int), default=None,
                       help="frames per clip (default 48; digits 16)")
    video.add_argument("--height", type=positive(int), default=None, help="default 128; digits 32")
    video.add_argument("--width", type=positive(int), default=None, help="default 160; digits 32 (square only)")
    video.add_argument("--fps", type=positive(int), default=25, help="default 25")
    video.add_argument("--codec", default="vp9", choices=("h264", "mpeg4", "vp9", "mjpeg"), help="default vp9")
    video.add_argument("--seed", type=int, default=0,
                       help="draws the clips and, for digits, the split of the digit images (default 0)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of expected errors")
    return parser


def verify_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shard-videos verify",
        description="Read every shard in OUT, check its index and checksum, decode every sample with the decoder "
                    "the pipeline uses here (DALI on the GPU if there is one, else DALI's CPU decoder; codecs that "
                    "decoder cannot read are decoded with PyAV, and the report says so). Exit status 1 on failure.")
    parser.add_argument("out")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"))
    parser.add_argument("--threads", type=positive(int), default=available_cores(), help="DALI decoding threads")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of expected errors")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Bad input (InputError, a missing file, any ValueError) ends as one line and exit 2 (`pipeline/errors.py`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command, args = parse(argv)
    console = Console(stderr=True)
    return run_command("shard-videos", lambda: command(args, console), args.debug, (InputError, ValueError))


def parse(argv: list[str]):
    """(the function that runs the subcommand, its parsed arguments)."""
    if argv[:1] == ["synth"]:
        return synth, synth_parser().parse_args(argv[1:])
    if argv[:1] == ["verify"]:
        return verify, verify_parser().parse_args(argv[1:])
    return shard, shard_parser().parse_args(argv)


def synth(args, console: Console) -> int:
    if args.preset == "digits":
        return synth_digits(args, console)
    given = [flag for flag, value in (("--clips-per-digit", args.clips_per_digit), ("--label", args.label),
                                      ("--digits", args.digits), ("--workers", args.workers)) if value is not None]
    if given:
        raise InputError(f"{', '.join(given)}: only for --preset digits")
    classes, per_class = args.classes or 4, args.clips_per_class or 4
    frames, height, width = args.frames or 48, args.height or 128, args.width or 160
    with console.status(f"writing {classes} x {per_class} synthetic clips to {args.out}"):
        preset = PRESETS[args.preset]
        paths = make_collection(args.out, classes, per_class, frames, (height, width), args.fps, args.codec,
                                args.seed, preset.motions, preset.test if args.held_out else preset.train,
                                args.still)
    console.print(f"wrote {len(paths)} {args.codec} clips ({frames} frames, {width}x{height}, "
                  f"{args.fps} fps) in {classes} class folders under {args.out}", soft_wrap=True)
    return 0


def synth_digits(args, console: Console) -> int:
    given = [flag for flag, value in (("--classes", args.classes), ("--clips-per-class", args.clips_per_class),
                                      ("--held-out", args.held_out), ("--still", args.still)) if value]
    if given:
        raise InputError(f"{', '.join(given)}: not for --preset digits (its classes are the 10 digits, its held-out "
                         f"digit images are the val and test splits); see --clips-per-digit, --label, --digits")
    size = args.height or args.width or 32
    if (args.width or size) != size:
        raise InputError(f"--preset digits writes square clips: --height {args.height} and --width {args.width} "
                         f"differ")
    workers = available_cores() if args.workers is None else args.workers
    if workers < 0:
        raise InputError(f"--workers must be 0 or more, got {workers}")
    frames, label = args.frames or 16, args.label or "digit"
    try:
        dataset = load_digits()
    except ImportError as error:  # scikit-learn missing: the message says how to install it
        raise InputError(first_line(error)) from None
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(f"writing digit clips to {args.out}", total=None)
        rows = make_digits(args.out, args.clips_per_digit or 2, frames, size, label=label, fps=args.fps,
                           codec=args.codec, seed=args.seed, instances=args.digits, workers=workers, dataset=dataset,
                           progress=lambda done, total: progress.update(task, completed=done, total=total))
    counts = Counter(row.split for row in rows)
    images = Counter(split for split, _ in {(row.split, row.instance) for row in rows})
    listing = Path(args.out) / LISTING
    console.print(f"wrote {len(rows)} {args.codec} clips ({frames} frames, {size}x{size}, {args.fps} fps; label: "
                  f"{label}) under {args.out}: " + ", ".join(f"{split} {counts[split]} ({images[split]} digit images)"
                                                              for split in counts) + f"; listed in {listing}",
                  soft_wrap=True)
    console.print(f"shard them with: shard-videos {listing} SHARDS --codec copy", soft_wrap=True, highlight=False)
    return 0


def shard(args, console: Console) -> int:
    settings = shard_settings(args)
    config = RunConfig(input=args.input, out=args.out, labels=args.labels, split_id=args.split_id,
                       unlabelled=args.unlabelled, skip_missing=args.skip_missing, val_fraction=args.val_fraction,
                       seed=args.seed, shard_size=args.shard_size, settings=settings, workers=args.workers,
                       resume=args.resume, overwrite=args.overwrite)
    outcome = build(config, console)
    print_summary(outcome, config, console)
    status = 0 if outcome.manifest["splits"] else 1
    if status:
        console.print(f"[bold red]error:[/] no clip was accepted; the reasons are in "
                      f"{Path(args.out) / 'rejected.jsonl'}", soft_wrap=True)
    if args.verify and not status:
        status = verify(verify_parser().parse_args([args.out]), console)
    return status


def shard_settings(args) -> Settings:
    """The transcoding settings of a `shard-videos` command line; refuses options that do not go together."""
    if args.codec == "copy":
        given = [flag for flag, value in (("--short-side", args.short_side), ("--fps", args.fps)) if value]
        if given:
            raise InputError(f"{' and '.join(given)} need transcoding; --codec copy keeps the source stream as it is")
    if args.frames:
        given = [flag for flag, value in (("--codec", args.codec), ("--gop", args.gop)) if value]
        if given:
            raise InputError(f"{' and '.join(given)} are for video shards; --frames {args.frames} stores JPEG frames "
                             f"(set --quality and --frame-step instead)")
    else:
        given = [flag for flag, value in (("--quality", args.quality), ("--frame-step", args.frame_step)) if value]
        if given:
            raise InputError(f"{' and '.join(given)} are for JPEG-frame shards: add --frames jpeg")
    if args.quality is not None and not 1 <= args.quality <= 100:
        raise InputError(f"--quality must be 1..100, got {args.quality}")
    if args.workers < 0:
        raise InputError(f"--workers must be 0 or more, got {args.workers}")
    codec = JPEG if args.frames else args.codec or "h264"
    return Settings(codec=codec, short_side=None if codec == "copy" else (args.short_side or 320), fps=args.fps,
                    gop=args.gop or 32, max_seconds=args.max_seconds, min_frames=args.min_frames, frames=args.frames,
                    quality=args.quality or 90, frame_step=args.frame_step or 1)


def print_summary(outcome, config: RunConfig, console: Console) -> None:
    manifest = outcome.manifest
    if outcome.already_complete:
        console.print(f"{config.out} is already complete (manifest.json exists); nothing to do")
    table = Table(title=f"shard-videos: {config.input} -> {config.out}")
    for column in ("split", "clips", "shards", "size", "MB / clip", "hours"):
        table.add_column(column, justify="right" if column != "split" else "left")
    for split, info in manifest["splits"].items():
        table.add_row(split, str(info["clips"]), str(info["shards"]), human(info["bytes"]),
                      f"{info['bytes'] / info['clips'] / 1e6:.2f}", f"{info['seconds'] / 3600:.2f}")
    console.print(table)
    by_reason = manifest["rejected"]["by_reason"]
    if by_reason:
        rejected = Table(title=f"rejected: {manifest['rejected']['total']} (details in rejected.jsonl)")
        rejected.add_column("reason")
        rejected.add_column("clips", justify="right")
        rejected.add_column("meaning")
        for reason, count in by_reason.items():
            meaning = REJECT_KINDS.get(reason, "named in a label file, not found" if reason == "missing" else "")
            rejected.add_row(reason, str(count), meaning)
        console.print(rejected)
    else:
        console.print("rejected: none")
    if outcome.processed:
        console.print(f"{outcome.processed} clips in {outcome.seconds:.1f} s: "
                      f"{outcome.processed / outcome.seconds:.2f} clips/s with --workers {config.workers}; "
                      f"codec {manifest['codec']}, container {manifest['container']}")
    console.print(f"wrote {Path(config.out) / 'manifest.json'}", soft_wrap=True)


def verify(args, console: Console) -> int:
    from shard_tools.verify import verify as verify_shards

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        report = verify_shards(args.out, args.device, args.threads, progress)
    for note in report.notes:
        console.print(note, soft_wrap=True, highlight=False)
    decoded = ", ".join(f"{n} with {name}" for name, n in report.decoders.items())
    console.print(f"{report.shards} shards, {report.samples} samples ({decoded})", soft_wrap=True)
    if report.failures:
        table = Table(title=f"{len(report.failures)} failure(s)")
        for column in ("shard", "key", "problem"):
            table.add_column(column, overflow="fold")
        for failure in report.failures:
            table.add_row(failure.shard, failure.key or "(whole shard)", failure.problem)
        console.print(table)
        for failure in report.failures:  # one plain line each, for logs and grep
            console.print(f"FAILED {failure.shard} {failure.key or '-'}: {failure.problem}", soft_wrap=True,
                          highlight=False)
        return 1
    if not report.samples:
        console.print("[bold red]error:[/] the shards hold no samples")
        return 1
    console.print("[bold green]verified:[/] every sample decodes with the expected number of frames")
    return 0


def human(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000:
            return f"{size:.1f} {unit}" if unit != "B" else f"{size:.0f} B"
        size /= 1000
    return f"{size:.1f} TB"


if __name__ == "__main__":
    sys.exit(main())
