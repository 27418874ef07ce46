"""Writing one shard (shard_tools/tarshard.py): a shard has its final name only once it is complete."""

import pytest

from pipeline.shards import UnfinishedShards, find_shards
from shard_tools.tarshard import HashingFile, ShardWriter

SAMPLE = [("webm", bytes(range(256)) * 8), ("json", b'{"num_frames": 3}'), ("frames", b"\x03\x00\x00\x00"),
          ("label", b"\x00\x00\x00\x00")]


def test_a_shard_has_its_final_name_only_once_written(tmp_path, monkeypatch):
    seen = []
    write = HashingFile.write

    def watched(self, data):  # what the folder holds at every write into the shard
        seen.append(sorted(p.name for p in tmp_path.iterdir()))
        return write(self, data)

    monkeypatch.setattr(HashingFile, "write", watched)
    writer = ShardWriter(tmp_path, "train-000000")
    for i in range(3):
        writer.add(f"train-{i:08d}", SAMPLE)
    writer.finish()
    assert seen and all(names == ["train-000000.tar.tmp"] for names in seen)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train-000000.idx", "train-000000.tar"]


class Killed(Exception):
    pass


def test_a_shard_interrupted_mid_write_leaves_no_final_name(tmp_path, monkeypatch):
    dying = []
    write = HashingFile.write

    def dies(self, data):  # the process is killed in the middle of the second sample
        if dying:
            raise Killed
        return write(self, data)

    monkeypatch.setattr(HashingFile, "write", dies)
    writer = ShardWriter(tmp_path, "train-000000")
    writer.add("train-00000000", SAMPLE)
    dying.append(True)
    with pytest.raises(Killed):
        writer.add("train-00000001", SAMPLE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train-000000.tar.tmp"]
    with pytest.raises(UnfinishedShards, match="did not finish"):  # and the loaders say what happened
        find_shards(tmp_path, "train")
