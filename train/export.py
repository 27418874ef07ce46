"""`train export CHECKPOINT --out DIR [--format huggingface|official]`: a TubeMAE checkpoint as a Hugging Face
`transformers` folder (default) or in the official VideoMAE layout.

CHECKPOINT is a TubeMAE checkpoint file (`checkpoint-<step>.pt`, `best.pt`) or a run folder (its newest good
checkpoint), read as every command reads checkpoints (train/checkpointer.py). A classifier's class names come from
the checkpoint's own `classes` (fine-tuning writes them), else from the manifest.json of the shards it was trained on
(its `config`), when there and of the right count; they become the Hugging Face config's id2label / label2id. A
missing file or one that is not a TubeMAE checkpoint, and what the format cannot hold, print one line naming the
file, exit code 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.errors import first_line, run_command
from train import checkpointer

OFFICIAL_NAME = "checkpoint.pth"
HF_CLASSES = {"pretrain": "VideoMAEForPreTraining", "classifier": "VideoMAEForVideoClassification"}


class ExportError(Exception):
    """The checkpoint cannot be exported; the message names the file and why."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train export", description="Export a TubeMAE checkpoint.")
    p.add_argument("checkpoint", help="a TubeMAE checkpoint file, or a run folder (its newest checkpoint)")
    p.add_argument("--out", required=True, help="the folder to write")
    p.add_argument("--format", choices=["huggingface", "official"], default="huggingface",
                   help=f"huggingface: a save_pretrained folder (config.json, model.safetensors); official: "
                        f"DIR/{OFFICIAL_NAME} as the official VideoMAE code writes it")
    p.add_argument("--debug", action="store_true", help="show tracebacks of expected errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def command() -> int:
        print(export(Path(args.checkpoint), Path(args.out), args.format))
        return 0
    return run_command("train export", command, args.debug, lambda: (ExportError, checkpointer.CheckpointError))


def export(source: Path, out: Path, fmt: str) -> str:
    """Write the export; returns what to tell the user (where it went, how to load it)."""
    from model import build_from_checkpoint, export_huggingface, export_official

    path, obj = checkpointer.weights_of(source, lambda text: print(f"train export: {text}", flush=True))
    if not isinstance(obj, dict) or not isinstance(obj.get("tubemae"), dict):
        raise ExportError(f"{path}: not a TubeMAE checkpoint (no 'tubemae' entry); `model.load_weights` reads "
                          f"other layouts into a model of the right size")
    try:
        model = build_from_checkpoint(obj, name=str(path))
    except (ValueError, TypeError, KeyError) as e:
        raise ExportError(first_line(e)) from None
    kind = obj["tubemae"]["kind"]
    try:
        if fmt == "official":
            export_official(out / OFFICIAL_NAME, model)
        else:
            export_huggingface(out, model, class_names(obj, model))
    except ValueError as e:  # what the format cannot hold
        raise ExportError(f"{path}: {first_line(e)}") from None
    except ImportError as e:  # transformers not installed: the message says how to install it
        raise ExportError(first_line(e)) from None
    except OSError as e:
        raise ExportError(f"{out}: cannot write there ({first_line(e)})") from None
    if fmt == "official":
        key = "model" if kind == "pretrain" else "module"
        return (f"wrote {out / OFFICIAL_NAME} (official VideoMAE layout, weights under '{key}', from {path})\n"
                f"load it with the official code (--finetune {out / OFFICIAL_NAME}) or model.load_weights")
    hf_class = HF_CLASSES[kind]
    return (f"wrote {out} (Hugging Face {hf_class}: config.json, model.safetensors; from {path})\n"
            f"load it with: from transformers import {hf_class}; model = {hf_class}.from_pretrained({str(out)!r})\n"
            f"inputs are B x T x C x H x W, ImageNet-normalised")


def class_names(obj: dict, model) -> list[str] | None:
    """A classifier's class names, in label-index order: the checkpoint's `classes`, else the classes in the
    manifest.json of the shards of its training config; None if neither is there with the model's count."""
    num_classes = getattr(model, "num_classes", None)
    if num_classes is None:
        return None
    names = obj.get("classes")
    if names is None:
        from pipeline.shards import read_manifest

        shards = ((obj.get("config") or {}).get("data") or {}).get("shards")
        try:
            names = read_manifest(Path(shards)).get("classes") if shards else None
        except (OSError, ValueError):  # moved or unfinished shards: the names are only a convenience
            names = None
    return list(names) if names and len(names) == num_classes else None
