"""Files a user may give where a checkpoint belongs, each with the words its one-line error says."""

from __future__ import annotations

from pathlib import Path

from model import ModelConfig, VideoMAEPretrain, save_checkpoint


def unusable_checkpoints(folder: Path, **geometry) -> dict[str, tuple[Path, str]]:
    """kind -> (file under `folder`, what its error says): a truncated checkpoint (of a tiny model of `geometry`),
    a text file, random bytes, a YAML config, a file that is not there."""
    good = folder / "good.pt"
    save_checkpoint(good, VideoMAEPretrain(ModelConfig(size="tiny", **geometry)))
    cut = folder / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    notes = folder / "notes.txt"
    notes.write_text("the weights are on the cluster\n")
    noise = folder / "noise.bin"
    noise.write_bytes(bytes(range(7, 256)) * 40)
    config = folder / "finetune.yaml"
    config.write_text("mode: finetune\ndata:\n  batch_size: 8\nmodel:\n  size: tiny\n")
    return {"truncated": (cut, "cannot be read"), "text": (notes, "a text file"),
            "random bytes": (noise, "neither a PyTorch zip archive nor a pickle"),
            "a YAML config": (config, "a YAML training config"), "missing": (folder / "gone.pt", "no such file")}
