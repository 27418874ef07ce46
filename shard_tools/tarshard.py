"""Writing one WebDataset tar shard and its DALI index, deterministically and atomically.

Every member gets the same metadata (mtime 0, uid/gid 0, no user names, mode 0644), members are written in a
fixed order, so the same samples give byte-identical shards. The tar is written as `<name>.tar.tmp` and renamed
when complete, after its index; a shard is finished when `<name>.tar` exists.

The index is what DALI's `wds2idx` writes (format v1.2): a line `v1.2 <num_samples>`, then per sample one line
`<ext> <data offset> <size> <member name>` repeated for each member of the sample.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

BLOCK = tarfile.BLOCKSIZE  # 512
INDEX_VERSION = "v1.2"


def member_bytes(size: int) -> int:
    """Bytes a member of `size` data bytes takes in the tar: one header block plus the data, padded."""
    return BLOCK + -(-size // BLOCK) * BLOCK


class HashingFile(io.RawIOBase):
    """A write-only file that also computes the sha256 and the size of what went through it."""

    def __init__(self, path: Path):
        self.file = open(path, "wb")
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.file.write(data)

    def tell(self) -> int:
        return self.size

    def close(self) -> None:
        if not self.file.closed:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
        super().close()


class ShardWriter:
    """Writes samples (key, [(extension, bytes), ...]) into `<folder>/<name>.tar` with `<name>.idx` beside it."""

    def __init__(self, folder: Path, name: str):
        self.tar_path = folder / f"{name}.tar"
        self.index_path = folder / f"{name}.idx"
        self.tmp_path = folder / f"{name}.tar.tmp"
        self.file = HashingFile(self.tmp_path)
        self.tar = tarfile.open(fileobj=self.file, mode="w", format=tarfile.USTAR_FORMAT)
        self.index_lines: list[str] = []
        self.keys: list[str] = []

    @property
    def size(self) -> int:
        return self.file.size

    def add(self, key: str, members: list[tuple[str, bytes]]) -> None:
        fields = []
        for extension, data in members:
            name = f"{key}.{extension}"
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            offset = self.tar.offset + BLOCK
            self.tar.addfile(info, io.BytesIO(data))
            fields.append(f"{extension} {offset} {len(data)} {name}")
        self.index_lines.append(" ".join(fields))
        self.keys.append(key)

    def finish(self) -> tuple[int, str]:
        """Close the tar, write the index, rename the tar into place; returns (size in bytes, sha256)."""
        self.tar.close()
        self.file.close()
        index_tmp = self.index_path.with_suffix(".idx.tmp")
        index_tmp.write_text(f"{INDEX_VERSION} {len(self.index_lines)}\n" + "\n".join(self.index_lines) + "\n")
        os.replace(index_tmp, self.index_path)
        os.replace(self.tmp_path, self.tar_path)
        return self.file.size, self.file.sha256.hexdigest()


def sample_bytes(members: list[tuple[str, bytes]]) -> int:
    return sum(member_bytes(len(data)) for _, data in members)
