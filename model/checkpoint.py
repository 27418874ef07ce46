"""Checkpoints: load official VideoMAE / VideoMAE V2, Hugging Face `transformers` and TubeMAE files into either
model; save TubeMAE files; export the official layout and a Hugging Face folder (names: model/huggingface.py).

Layouts read (detected from the keys; `module.`, `_orig_mod.` and `backbone.` prefixes are stripped):
- official pre-training, a dict under `model`: encoder.patch_embed.proj, encoder.blocks.N.{norm1, attn.qkv,
  attn.q_bias, attn.v_bias, attn.proj, norm2, mlp.fc1, mlp.fc2}, encoder.norm, encoder_to_decoder, mask_token,
  decoder.blocks.N..., decoder.norm, decoder.head. TubeMAE's `VideoMAEPretrain` uses exactly these names.
- official fine-tuned, under `module` (or `model`): patch_embed, blocks.N..., fc_norm, head (`VideoMAEClassifier`).
- Hugging Face (VideoMAEForPreTraining / ForVideoClassification / VideoMAEModel, a state dict, a .safetensors
  file or a `save_pretrained` folder): per-projection query/key/value are joined into qkv (model/huggingface.py).
- TubeMAE: {"model": official-layout state dict, "tubemae": {"version": 1, "kind": "pretrain" | "classifier",
  "config": ModelConfig fields, "num_classes": int | None}} plus what the trainer adds (optimizer, step, ...).
  The official code loads these files as they are.

Any layout loads into either model: a classifier takes the encoder of a pre-training checkpoint (the decoder and
the pre-training `encoder.norm` are skipped, fc_norm and head stay new), a pre-training model takes the encoder of
a fine-tuned one. Keys the model lacks, and checkpoint keys with no place in it, are reported by name; a shape
mismatch is an error naming the key.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pickle
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable

import torch
from torch import nn

from pipeline.errors import first_line

from .classifier import VideoMAEClassifier
from .config import ModelConfig
from .huggingface import huggingface_config, huggingface_to_official, official_to_huggingface
from .videomae import VideoMAEPretrain

FORMAT_VERSION = 1
HF_FILES = ("model.safetensors", "pytorch_model.bin")  # the weights of a Hugging Face save_pretrained folder
_STRIP_PREFIXES = ("module.", "_orig_mod.", "backbone.")


@dataclass
class LoadReport:
    source: str
    layout: str  # "tubemae" | "official" | "huggingface"
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # model keys the checkpoint did not fill (left as initialised)
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys with no place in the model
    skipped: list[str] = field(default_factory=list)  # checkpoint keys this kind of model does not use, or excluded
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{self.source} ({self.layout} layout): loaded {len(self.loaded)} tensors"]
        if self.missing:
            lines.append(f"  missing (left as initialised): {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected (ignored): {', '.join(self.unexpected)}")
        if self.skipped:
            groups = Counter(_group(key) for key in self.skipped)
            lines.append("  skipped: " + ", ".join(f"{g} ({n})" for g, n in sorted(groups.items())))
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def _group(key: str) -> str:
    parts = key.split(".")
    return ".".join(parts[:2]) + ".*" if len(parts) > 2 else key


def unwrap(model: nn.Module) -> nn.Module:
    """The model under torch.compile / DistributedDataParallel wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def read_checkpoint(source: str | os.PathLike | dict, trust_pickle: bool = False) -> dict:
    """The object in a checkpoint file (a dict), a .safetensors file or a Hugging Face `save_pretrained` folder.

    Files are unpickled with `weights_only=True` (argparse.Namespace allowed, as official files store `args`);
    `trust_pickle=True` lifts that for files you trust.
    """
    if isinstance(source, dict):
        return source
    path = Path(source)
    if path.is_dir():
        found = [path / name for name in HF_FILES if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(f"{path}: no model.safetensors or pytorch_model.bin in this folder")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise ImportError(f"{path}: reading .safetensors needs the `safetensors` package "
                              f"(pip install safetensors)") from e
        return load_file(path)
    with open(path, "rb") as f:
        head = f.read(512)
    if not head.startswith((ZIP_MAGIC, PICKLE_MAGIC)):
        raise ValueError(f"{path}: not a TubeMAE checkpoint, nor a PyTorch file: {what_file(head)}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not trust_pickle:
            raise ValueError(f"{path}: the file holds Python objects beyond tensors ({e}); if you trust it, "
                             f"load it with trust_pickle=True") from e
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a file cut short, or damaged: torch's first sentence says where it stopped
        reason = first_line(e).split(". ")[0]
        raise ValueError(f"{path}: cannot be read ({reason}); it may be truncated or damaged") from e


ZIP_MAGIC, PICKLE_MAGIC = b"PK\x03\x04", b"\x80"  # how torch.save files start (zip archive; legacy pickle)
CONFIG_SECTIONS = re.compile(rb"^(mode|data|model|optim|run|finetune)\s*:", re.MULTILINE)


def what_file(head: bytes) -> str:
    """What a file that is not a checkpoint holds, from its first bytes."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"neither a PyTorch zip archive nor a pickle (it starts with bytes {head[:8].hex(' ')})"
    if CONFIG_SECTIONS.search(head):
        return "a YAML training config (give it to --config; finetune.weights takes a checkpoint or a run folder)"
    start = " ".join(text.split())[:40]
    return f"a text file (it starts with {start!r})" if start else "an empty file"


def state_dict_of(obj: dict) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict in the official layout, with `encoder.` on every encoder key, layout name) of a checkpoint."""
    layout = "tubemae" if "tubemae" in obj else "official"
    for key in ("model", "module", "state_dict"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError("no state dict found: expected tensors at the top level or under 'model' / 'module'")
    sd = {}
    for key, value in obj.items():
        for prefix in _STRIP_PREFIXES:
            key = key.removeprefix(prefix)
        sd[key] = value
    if any(".attention.attention." in k or k.startswith(("videomae.", "embeddings.patch_embeddings")) for k in sd):
        return huggingface_to_official(sd), "huggingface"
    if any(k.startswith(("patch_embed.", "blocks.")) for k in sd):  # fine-tuned layout: the encoder at top level
        sd = {("encoder." + k if k.startswith(("patch_embed.", "blocks.", "norm.")) else k): v
              for k, v in sd.items()}
    return sd, layout


def _for_model(sd: dict[str, torch.Tensor], model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename official-layout keys for `model`; returns (renamed, keys this kind of model does not use)."""
    if isinstance(model, VideoMAEClassifier):
        renamed, unused = {}, []
        for key, value in sd.items():
            if key.startswith(("encoder.patch_embed.", "encoder.blocks.")):
                renamed[key.removeprefix("encoder.")] = value
            elif key.startswith(("encoder.norm.", "decoder.", "encoder_to_decoder.")) or key == "mask_token":
                unused.append(key)  # pre-training parts; mean pooling has no final norm
            else:
                renamed[key] = value
        return renamed, unused
    unused = [key for key in sd if key.startswith(("fc_norm.", "head."))]
    return {k: v for k, v in sd.items() if k not in unused}, unused


def load_weights(model: nn.Module, source: str | os.PathLike | dict, *, exclude: Iterable[str] = (),
                 strict: bool = False, trust_pickle: bool = False, name: str | None = None) -> LoadReport:
    """Load a checkpoint of any supported layout into a VideoMAEPretrain or VideoMAEClassifier.

    exclude: key prefixes (model names) not to load, e.g. ("head.",) to start a new head from a fine-tuned
    checkpoint with other classes. strict: raise if anything is missing or unexpected. name: what reports and
    errors call the checkpoint when `source` is its dict, already read.
    """
    target = unwrap(model)
    name = name or (str(source) if not isinstance(source, dict) else "<state dict>")
    obj = read_checkpoint(source, trust_pickle)
    try:
        sd, layout = state_dict_of(obj)
    except ValueError as error:  # say which file
        raise ValueError(f"{name}: {error}") from None
    sd, skipped = _for_model(sd, target)
    own = target.state_dict()
    exclude = tuple(exclude)
    report = LoadReport(name, layout)
    report.skipped = skipped + [k for k in sd if exclude and k.startswith(exclude)]
    report.unexpected = [k for k in sd if k not in own and k not in report.skipped]
    chosen = {k: v for k, v in sd.items() if k in own and k not in report.skipped}
    for key, value in chosen.items():
        if value.shape != own[key].shape:
            hint = " (pass exclude=('head.',) to start a new head)" if key.startswith("head.") else ""
            raise ValueError(f"{name}: '{key}' has shape {tuple(value.shape)} in the checkpoint but "
                             f"{tuple(own[key].shape)} in the model (size '{target.cfg.size}'){hint}")
    report.missing = [k for k in own if k not in chosen]
    report.loaded = list(chosen)
    target.load_state_dict(chosen, strict=False)
    header = obj.get("tubemae") if isinstance(obj, dict) else None
    if isinstance(header, dict) and isinstance(target, VideoMAEClassifier):
        grid = ModelConfig(**header["config"]).grid
        if grid != target.cfg.grid and tuple(target.cfg.pos_embed_grid or target.cfg.grid) != grid:
            report.notes.append(f"the checkpoint was trained on token grid {grid}, this model lays a new position "
                                f"table over {target.cfg.grid}; set model.pos_embed_grid={list(grid)} to resample "
                                f"the trained one instead")
    if strict and (report.missing or report.unexpected):
        raise ValueError(f"{name}: strict load failed:\n{report}")
    return report


def _kind(model: nn.Module) -> str:
    if isinstance(model, VideoMAEPretrain):
        return "pretrain"
    if isinstance(model, VideoMAEClassifier):
        return "classifier"
    raise TypeError(f"expected a VideoMAEPretrain or VideoMAEClassifier, got {type(model).__name__}")


def write_atomically(path: str | os.PathLike, content: bytes | str | Callable[[BinaryIO], object]) -> Path:
    """Write `content` (bytes, text, or a function writing into a binary file) to a temporary file beside `path`,
    fsync it, rename it over `path`, fsync the folder: a crash at any point leaves the old file or the new one, never
    a half-written one under the real name. A failed write removes its temporary file; a killed one leaves
    `<name>.tmp`, which the next write of `path` replaces."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    data = content.encode() if isinstance(content, str) else content
    write = data if callable(data) else (lambda f: f.write(data))
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    return path


def _save(obj: dict, path: str | os.PathLike) -> None:
    write_atomically(path, lambda f: torch.save(obj, f))


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def save_checkpoint(path: str | os.PathLike, model: nn.Module, state_dict: dict[str, torch.Tensor] | None = None,
                    **extra: Any) -> None:
    """Write a TubeMAE checkpoint (format in the module docstring); `extra` entries are stored beside it.
    `state_dict`: the model's weights when they are not all on this process (FSDP gathers them first)."""
    model = unwrap(model)
    header = {"version": FORMAT_VERSION, "kind": _kind(model), "config": dataclasses.asdict(model.cfg),
              "num_classes": getattr(model, "num_classes", None)}
    weights = cpu_state_dict(model) if state_dict is None else state_dict
    _save({"model": weights, "tubemae": header, **extra}, path)


def export_official(path: str | os.PathLike, model: nn.Module) -> None:
    """Write the official layout: {'model': ...} for pre-training, {'module': ...} for a fine-tuned classifier."""
    key = "model" if _kind(unwrap(model)) == "pretrain" else "module"
    _save({key: cpu_state_dict(model)}, path)


def export_huggingface(path: str | os.PathLike, model: nn.Module, class_names: list[str] | None = None) -> None:
    """Write a Hugging Face `save_pretrained` folder (config.json, model.safetensors) that
    `VideoMAEForPreTraining.from_pretrained` (pre-training) or `VideoMAEForVideoClassification.from_pretrained`
    (classifier, `class_names` as its id2label) loads; what transformers cannot hold is in model/huggingface.py."""
    model = unwrap(model)
    config = huggingface_config(model, class_names)  # before writing anything: it checks what can be exported
    from safetensors.torch import save_file  # a dependency of transformers

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    save_file(official_to_huggingface(cpu_state_dict(model)), folder / "model.safetensors", metadata={"format": "pt"})


def build_from_checkpoint(source: str | os.PathLike | dict, name: str | None = None) -> nn.Module:
    """The model stored in a TubeMAE checkpoint, built from its config and loaded (strict). `name`: what errors
    call the checkpoint when `source` is its dict, already read."""
    obj = read_checkpoint(source)
    name = name or (source if not isinstance(source, dict) else "<dict>")
    header = obj.get("tubemae")
    if not isinstance(header, dict):
        raise ValueError(f"{name} is not a TubeMAE checkpoint (no 'tubemae' entry): build the model with its size "
                         f"and call load_weights")
    if header.get("version") != FORMAT_VERSION:
        raise ValueError(f"{name}: TubeMAE checkpoint version {header.get('version')} is not supported "
                         f"(this code reads version {FORMAT_VERSION})")
    cfg = ModelConfig(**header["config"])
    model = VideoMAEPretrain(cfg) if header["kind"] == "pretrain" else VideoMAEClassifier(cfg, header["num_classes"])
    load_weights(model, obj, strict=True)
    return model
