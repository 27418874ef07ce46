"""The samples of a shard folder, read and rewritten, for tests: what `shard-videos` wrote, and a shard changed in
place (through the writer shard-videos uses) so only the checks of the members themselves can tell."""

import json
import tarfile
from pathlib import Path

from shard_tools.tarshard import ShardWriter


def read_samples(out: Path) -> list[dict]:
    """Every sample of every shard in order: shard name, key, member extensions in order, members."""
    samples = []
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as archive:
            for member in archive:
                key, extension = member.name.split(".", 1)
                if not samples or samples[-1]["key"] != key:
                    samples.append({"shard": tar.name, "key": key, "order": [], "members": {}})
                samples[-1]["order"].append(extension)
                samples[-1]["members"][extension] = archive.extractfile(member).read()
    return samples


def files_of(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def rewrite_first_sample(out: Path, change) -> str:
    """Rewrite the first shard of `out` with `change(members)` applied to its first sample, through the writer
    shard-videos uses (tar and index), and record the new size and sha256 in manifest.json: only the checks of
    the members themselves can tell. Returns the sample's key."""
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["shards"][0]
    samples = [s for s in read_samples(out) if s["shard"] == entry["name"]]
    writer = ShardWriter(out, entry["name"].removesuffix(".tar"))
    for i, sample in enumerate(samples):
        members = {ext: sample["members"][ext] for ext in sample["order"]}
        writer.add(sample["key"], list((change(members) if i == 0 else members).items()))
    entry["bytes"], entry["sha256"] = writer.finish()
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return samples[0]["key"]
