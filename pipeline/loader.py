"""`DaliLoader`: batches from the DALI graphs as a PyTorch iterator (ARCHITECTURE.md section 2).

Per batch: the reader graph yields the clips' members and uniform draws; `pipeline.sampling` turns them into frame
indices, crop boxes and flips; a decode graph (one of `decode_pipelines`, round robin) decodes and crops, from
video (a clip per sample) or from JPEG frames (one flat batch of all frames of all clips, `pipeline.frames`); the
views reach torch through DLPack without a copy. All of that runs on a prefetch thread (`pipeline.feeder`); the
training thread takes finished batches and draws masks (pretrain) or random erasing (finetune) on the training
device with the loader's own generator.

    loader = DaliLoader(cfg)               # rank and world size from torch.distributed when initialised
    for epoch in range(epochs):
        for batch in loader:               # video (B*V) x C x T x H x W, mask, label, key[, view]
            ...
        state = loader.state_dict()        # save with the checkpoint; load_state_dict resumes exactly
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from pipeline import frames
from pipeline.config import DataConfig
from pipeline.feeder import END, Feeder
from pipeline.graph import RAND_AUGMENT_OPS, decode_pipeline, frame_inputs, frames_decode_pipeline, reader_pipeline
from pipeline.masking import draw_masks, random_erase
from pipeline.ranks import rank_and_world
from pipeline.sampling import augment_choices, crop_boxes, derive_seed, frame_indices
from pipeline.shards import ChangedShard, check_unchanged, choose_decode_device, find_shards


class DecodeError(RuntimeError):
    """A clip failed to decode; the message names its key, shard and byte offset."""


@dataclass
class _Skipped:
    key: str
    source: str
    reason: str


@dataclass
class _Batch:
    """One batch handed to a decode graph, kept until consumed (to re-feed it after a decode failure)."""
    inputs: dict[str, list]  # per clip: video 'encoded', 'indices'; JPEG frames 'jpegs' (list), 'windows'; both
    keys: list[str]          # 'boxes', 'flips'[, 'augment']
    sources: list[str]  # 'shard.tar:offset' of each clip's video or frames member
    labels: np.ndarray  # (B,) int64
    sizes: list[tuple[int, int]]  # (height, width) from each clip's .json: what the boxes were computed for
    state: dict  # loader state once this batch is consumed
    skipped: list[_Skipped] = field(default_factory=list)  # its clips left out (on_error: skip)
    pipe: int = -1  # the decode graph it runs on; -1: none (every clip left out)

    def without(self, drop: set[int]) -> "_Batch":
        keep = [i for i in range(len(self.keys)) if i not in drop]
        return replace(self, inputs={k: [v[i] for i in keep] for k, v in self.inputs.items()},
                       keys=[self.keys[i] for i in keep], sources=[self.sources[i] for i in keep],
                       labels=self.labels[keep], sizes=[self.sizes[i] for i in keep])


@dataclass
class _Decoded:
    """What the prefetch thread hands over: a batch's views ((B*V) x C x T x S x S), or None when every clip of it
    was left out (its state and skipped clips still count)."""
    video: torch.Tensor | None
    batch: _Batch


def _dali_reason(error: Exception) -> str:
    """The line of a DALI error that says what went wrong (the text after 'encountered:')."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    after = lines[lines.index("encountered:") + 1:] if "encountered:" in lines else lines
    return next((line for line in after if not line.startswith(("C++ context", "Current pipeline"))),
                "decode failed")


def batches_ahead(cfg: DataConfig) -> int:
    """Batches the loader decodes ahead of the one the training thread takes: `prefetch` scheduled per decode
    graph, `prefetch` finished in the prefetch thread's queue and one the thread holds until there is room."""
    return cfg.prefetch * (cfg.decode_pipelines + 1) + 1


class DaliLoader:
    def __init__(self, cfg: DataConfig, device: str | torch.device | None = None,
                 shard_id: int | None = None, num_shards: int | None = None):
        self.cfg = cfg
        rank, world = rank_and_world()
        self.shard_id = rank if shard_id is None else shard_id
        self.num_shards = world if num_shards is None else num_shards
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.shards = find_shards(cfg.shards, cfg.split)
        if self.shards.frames:
            frames.check_frame_step(cfg, self.shards.frame_step, self.shards.root)
            self._members = frames.MemberTable(self.shards.tars, self.shards.indexes)
        self.decode_device = choose_decode_device(cfg.decode_device, self.shards)
        if self.decode_device == "gpu" and self.device.type != "cuda":
            raise ValueError(f"decode_device 'gpu' needs a CUDA training device, got {self.device}")

        self._plan = self._plan_epoch()
        self._device_id = self.device.index if self.device.type == "cuda" else None
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(derive_seed(cfg.seed, self.shard_id, 1))
        self._reader = reader_pipeline(cfg, self.shards, self.shard_id, self.num_shards)
        self._decoders = []
        self._build_decoders()
        self._in_flight: deque[_Batch] = deque()
        self._fed = 0  # batches handed to decode graphs since start (round robin)
        self._feeder: Feeder | None = None  # the prefetch thread of the epoch being iterated
        self.epoch = 0
        self._reader_pos = 0  # reader batches run in the current epoch
        self._active = False  # an epoch is being iterated
        self._state = {**self._reader_state(), "generator": self._generator.get_state()}
        self.skipped: list[_Skipped] = []

    def _plan_epoch(self) -> list[int]:
        """Rows each reader batch of an epoch yields on this rank (0: padding). DALI splits the global sample order
        into contiguous parts, one per rank, and pads every part to the same number of batches."""
        cfg, total = self.cfg, self.shards.num_samples
        if total < self.num_shards:
            raise ValueError(f"{total} samples in split '{cfg.split}' cannot be spread over {self.num_shards} ranks")
        parts = [total * (r + 1) // self.num_shards - total * r // self.num_shards for r in range(self.num_shards)]
        self.part_size = parts[self.shard_id]
        b = cfg.batch_size
        reader_batches = math.ceil(max(parts) / b)
        if cfg.drop_last:  # the same number of full batches on every rank
            full = min(parts) // b
            plan = [b] * full + [0] * (reader_batches - full)
        else:  # every sample of the part once; the last batch may be short
            plan = [min(max(self.part_size - j * b, 0), b) for j in range(reader_batches)]
        if not any(plan):
            raise ValueError(f"drop_last with batch_size {b} leaves no batch: the smallest rank part has "
                             f"{min(parts)} samples; lower batch_size or set drop_last: false")
        return plan

    # --- PyTorch iterator protocol (the training thread) ------------------------------------------------

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return sum(1 for rows in self._plan if rows)

    def __iter__(self):
        self._stop_feeder()
        self._check_shards(epoch_start=True)  # before the reader touches them again
        if self._active:  # the previous epoch was left unfinished: drop the rest of it
            self._finish_epoch()
        return self

    def __next__(self) -> dict:
        self._active = True
        while True:
            if self._feeder is None:
                self._feeder = Feeder(self, depth=self.cfg.prefetch)
            item = self._feeder.get()
            if item is END or isinstance(item, BaseException):
                self._stop_feeder()
                if item is END:
                    self._finish_epoch()
                    raise StopIteration
                raise item
            self.skipped += item.batch.skipped
            if item.video is not None:
                out = self._batch(item.video, item.batch)
            self._state = {**item.batch.state, "generator": self._generator.get_state()}
            if item.video is not None:
                return out

    def _batch(self, video: torch.Tensor, batch: _Batch) -> dict:
        """The batch contract's dict: views, labels and keys per row; masks, erasing or view indices drawn here."""
        clips = len(batch.keys)
        num_views = len(video) // clips
        out = {"video": video,
               "label": torch.from_numpy(batch.labels).repeat_interleave(num_views).to(self.device),
               "key": [key for key in batch.keys for _ in range(num_views)]}
        if self.cfg.mode == "pretrain":
            out.update(draw_masks(self.cfg, len(video), self._generator, self.device))
        elif self.cfg.mode == "finetune" and self.cfg.erase_prob > 0:
            out["video"] = random_erase(video, self.cfg.erase_prob, self._generator)
        elif self.cfg.mode == "eval":
            out["view"] = torch.arange(num_views, device=self.device).repeat(clips)
        return out

    def close(self) -> None:
        """End the prefetch thread now (a run that stops mid-epoch); iterating again starts a new one."""
        self._stop_feeder()

    def _stop_feeder(self) -> None:
        if self._feeder is not None:
            self._feeder.close()
            self._feeder = None

    # --- the prefetch thread: reading, sampling, feeding, decoding ------------------------------------------

    def produce(self) -> _Decoded | object:
        """The next batch of this epoch, decoded, or END (called on the prefetch thread, `pipeline.feeder`)."""
        while True:
            self._fill()
            if not self._in_flight:
                return END
            batch = self._in_flight.popleft()
            if batch.pipe < 0:
                return _Decoded(None, batch)
            self._fill()  # the graphs go on decoding while this batch is taken, and while it waits in the queue
            try:
                outputs = self._decoders[batch.pipe].outputs()
            except RuntimeError as error:
                self._recover(batch, error)
                continue
            return _Decoded(self._views(batch, *outputs), batch)

    def _fill(self) -> None:
        """Keep `prefetch` batches scheduled per decode graph."""
        while len(self._in_flight) < self.cfg.prefetch * len(self._decoders):
            batch = self._read_batch()
            if batch is None:
                return
            self._submit(batch)

    def _reader_rows(self) -> tuple[tuple, int]:
        """The reader graph's next batch of this epoch on this rank and how many of its rows count (0: the end)."""
        out, rows = None, 0
        while self._reader_pos < len(self._plan) and not rows:
            out = self._run_reader()
            rows = self._plan[self._reader_pos]
            self._reader_pos += 1
        while rows and self._reader_pos < len(self._plan) and not any(self._plan[self._reader_pos:]):
            self._run_reader()  # nothing more to yield this epoch: run the reader to the epoch's end
            self._reader_pos += 1
        return out, rows

    def _read_batch(self) -> _Batch | None:
        """The next batch of this epoch from the reader graph, with its sampling decided and, for JPEG-frame
        shards, its frames read; None at epoch end."""
        out, rows = self._reader_rows()
        if not rows:
            return None
        if self.shards.frames:
            counts, labels, metas, u_time, u_space = out
            members = metas  # the .json's source_info names the sample
        else:
            members, counts, labels, metas, u_time, u_space = out
        batch = _Batch({}, [], [], np.array([], dtype=np.int64), [], self._reader_state())
        for i in range(rows):
            tar, offset, name = members[i].source_info().rsplit(":", 2)
            key, meta = name.rsplit(".", 1)[0], json.loads(bytes(np.asarray(metas[i])))
            if "height" not in meta or "width" not in meta:
                raise ValueError(f"{name} ({tar}:{offset}): its .json has no width/height (ARCHITECTURE.md "
                                 f"section 1); rebuild the shards with `shard-videos`")
            height, width = int(meta["height"]), int(meta["width"])
            draws = np.asarray(u_space[i])
            boxes, flips = crop_boxes(self.cfg, height, width, draws)
            indices = frame_indices(self.cfg, int(np.asarray(counts[i])[0]), np.asarray(u_time[i]))
            inputs = {"boxes": boxes, "flips": flips}
            if self.cfg.rand_augment_ops:
                inputs["augment"] = augment_choices(self.cfg, draws, len(RAND_AUGMENT_OPS))
            if self.shards.frames:
                try:
                    offset, frame_inputs = self._read_frames(tar, key, meta, indices, boxes)
                except (frames.FrameError, OSError) as error:
                    self._left_out(batch, key, f"{tar}:{offset}", f"cannot read its frames: {error}")
                    continue
                inputs.update(frame_inputs)
            else:
                inputs.update(encoded=np.array(members[i]), indices=indices)
            for input_name, value in inputs.items():
                batch.inputs.setdefault(input_name, []).append(value)
            batch.keys.append(key)
            batch.sources.append(f"{tar}:{offset}")
            batch.sizes.append((height, width))
            batch.labels = np.append(batch.labels, int(np.asarray(labels[i])[0]))
        return batch

    def _read_frames(self, tar: str, key: str, meta: dict, indices: np.ndarray, boxes: np.ndarray):
        """(offset of the clip's .jpegs member, its decode graph inputs): the JPEGs of the stored frames that hold
        `indices`, read from the tar, and with roi_decode the window of its frames to decode, the boxes in it."""
        offset, size = self._members.locate(tar, key)
        offsets = frames.frame_offsets(meta, size)
        jpegs = frames.read_frames(tar, offset, offsets, frames.stored_indices(indices, self.shards.frame_step))
        if not self.cfg.roi_decode:  # whole frames
            return offset, {"jpegs": jpegs}
        window, boxes = frames.crop_window(boxes, int(meta["height"]), int(meta["width"]), self.cfg.input_size)
        return offset, {"jpegs": jpegs, "windows": window, "boxes": boxes}

    def _left_out(self, batch: _Batch, key: str, source: str, reason: str) -> None:
        """A clip that cannot be read: an error naming it (after checking its shard did not change on disk), or
        with on_error: skip, left out of `batch` and counted."""
        self._check_shards()
        named = f"{key} (shard {source.rsplit(':', 1)[0]}, offset {source.rsplit(':', 1)[1]})"
        if self.cfg.on_error == "raise":
            raise DecodeError(f"{named}: {reason}. Check the shards with `shard-videos verify "
                              f"{self.shards.root}`, or set on_error: skip to drop such clips and count them.")
        batch.skipped.append(_Skipped(key, source, reason))
        print(f"[pipeline] skipped {named}: {reason}", file=sys.stderr, flush=True)

    def _run_reader(self):
        """One batch of the reader graph; a reader error caused by a shard that changed on disk names the shard."""
        try:
            return self._reader.run()
        except RuntimeError:
            self._check_shards()
            raise

    def _submit(self, batch: _Batch) -> None:
        if not batch.keys:  # every clip left out: nothing to decode, but its place in the order counts
            batch.pipe = -1
            self._in_flight.append(batch)
            return
        batch.pipe = self._fed % len(self._decoders)
        self._fed += 1
        pipe = self._decoders[batch.pipe]
        self._feed(pipe, batch)
        pipe.schedule_run()
        self._in_flight.append(batch)

    def _feed(self, pipe, batch: _Batch) -> None:
        inputs = frame_inputs(self.cfg, batch.inputs) if self.shards.frames else batch.inputs
        for name, data in inputs.items():
            pipe.feed_input(name, data)

    def _views(self, batch: _Batch, views, shapes) -> torch.Tensor:
        """The decode graph's output as the batch's (B*V, C, T, S, S) views, after checking that the decoded
        frames have the size the boxes were computed for."""
        clips, decoded = len(batch.keys), shapes.as_array()  # video (B, 4): F, H, W, C; frames (T*B*G, 3): H, W, C
        if self.shards.frames:  # row (t, clip, g) -> clip
            groups = len(decoded) // clips // self.cfg.num_frames
            rows = zip(np.arange(len(decoded)) // groups % clips, decoded[:, 0], decoded[:, 1])
        else:
            rows = zip(range(clips), decoded[:, 1], decoded[:, 2])
        for i, height, width in rows:
            if (height, width) != batch.sizes[i]:
                raise DecodeError(f"{batch.keys[i]} ({batch.sources[i]}): decoded frames are {width}x{height} but "
                                  f"its .json says {batch.sizes[i][1]}x{batch.sizes[i][0]}; the crop boxes would "
                                  f"be wrong. Rebuild the shards with `shard-videos`.")
        with torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext():
            video = torch.from_dlpack(views.as_tensor())  # no copy
        if self.shards.frames:  # (T*B*G, Vf, C, S, S) -> (B, G, Vf, C, T, S, S) -> (B*G*Vf, C, T, S, S)
            t_count = self.cfg.num_frames
            video = video.view(t_count, clips, -1, *video.shape[1:]).permute(1, 2, 3, 4, 0, 5, 6)
            video = video.view(-1, *video.shape[3:])  # a view: T is the outermost axis in memory
        else:  # (B, V, C, T, S, S) -> (B*V, C, T, S, S)
            video = video.view(clips * video.shape[1], *video.shape[2:])
        return video.to(torch.bfloat16) if self.cfg.dtype == "bfloat16" else video

    def _build_decoders(self) -> None:
        graph = frames_decode_pipeline if self.shards.frames else decode_pipeline
        self._decoders = [graph(self.cfg, self.decode_device, self._device_id,
                                derive_seed(self.cfg.seed, self.shard_id, 2, p))
                          for p in range(self.cfg.decode_pipelines)]

    # --- bad clips (prefetch thread) ----------------------------------------------------------------------

    def _recover(self, failed: _Batch, error: Exception) -> None:
        """A decode graph failed: find the clips that fail on their own, then raise or leave them out of `failed`,
        and schedule it and the batches after it again."""
        pending = [failed] + list(self._in_flight)
        self._in_flight.clear()
        self._build_decoders()  # a failed DALI pipeline is not reusable
        bad = [i for i in range(len(failed.keys)) if not self._decodes(failed.without(
            set(range(len(failed.keys))) - {i}))]
        self._build_decoders()
        reason = _dali_reason(error)
        if not bad:
            raise DecodeError(f"a batch failed to decode but none of its clips fails alone: "
                              f"{', '.join(failed.keys)} ({reason})") from error
        named = "; ".join(f"{failed.keys[i]} (shard {failed.sources[i].rsplit(':', 1)[0]}, offset "
                          f"{failed.sources[i].rsplit(':', 1)[1]})" for i in bad)
        if self.cfg.on_error == "raise":
            raise DecodeError(f"cannot decode {named}: {reason}. Check the shards with `shard-videos verify`, "
                              f"or set on_error: skip to drop such clips and count them.") from error
        print(f"[pipeline] skipped {named}: {reason}", file=sys.stderr, flush=True)
        pending[0] = failed.without(set(bad))
        pending[0].skipped = failed.skipped + [_Skipped(failed.keys[i], failed.sources[i], reason) for i in bad]
        for batch in pending:
            self._submit(batch)

    def _decodes(self, single: _Batch) -> bool:
        pipe = self._decoders[0]
        self._feed(pipe, single)
        try:
            pipe.schedule_run()
            pipe.outputs()
            return True
        except RuntimeError:
            self._build_decoders()
            return False

    def summary(self) -> str:
        """One line per clip skipped for failing to decode (on_error: skip)."""
        if not self.skipped:
            return "no clips skipped"
        distinct = len({s.key for s in self.skipped})
        lines = [f"{len(self.skipped)} clips skipped because they failed to decode ({distinct} distinct):"]
        lines += [f"  {s.key} ({s.source}): {s.reason}" for s in self.skipped]
        return "\n".join(lines)

    # --- epochs and changed shards (training thread, the prefetch thread stopped) ---------------------------

    def _check_shards(self, epoch_start: bool = False) -> None:
        """Each tar still has its size at start (one stat each; `pipeline.shards.check_unchanged`). At an epoch
        start, on_error: skip leaves a changed shard out from then on (`_leave_out`); mid-epoch (the reader failed
        on it) it is always an error: the epoch's sample order and every rank's part were drawn with it."""
        while True:
            try:
                return check_unchanged(self.shards)
            except ChangedShard as error:
                if self.cfg.on_error != "skip" or not epoch_start or len(self.shards.tars) == 1:
                    raise
                self._leave_out(error)

    def _leave_out(self, error: ChangedShard) -> None:
        """Rebuild the reader without the changed shard; this rank's lost clips count as skipped. The epochs
        are shorter from now on, and the exact resume of this run needs the shard back."""
        lost_before = self.part_size
        self._discard_in_flight()
        self.epoch += self._active  # an epoch left unfinished ends here
        self._active = False
        self.shards = self.shards.without(error.tar)
        self._plan = self._plan_epoch()
        self._reader = reader_pipeline(self.cfg, self.shards, self.shard_id, self.num_shards)
        self._reader_pos = 0
        self._state = {**self._reader_state(), "generator": self._generator.get_state()}
        lost = lost_before - self.part_size
        self.skipped += [_Skipped(f"{Path(error.tar).name} (left out)", error.tar, str(error))] * lost
        print(f"[pipeline] on_error: skip: leaving out {error.tar} ({lost} of this rank's clips per epoch): "
              f"{error}", file=sys.stderr, flush=True)

    def _reader_state(self) -> dict:
        return {"reader": self._reader.checkpoint(), "epoch": self.epoch, "reader_pos": self._reader_pos,
                "fingerprint": self._fingerprint()}

    def _discard_in_flight(self) -> None:
        """Collect and drop the batches scheduled on the decode graphs."""
        try:
            while self._in_flight:
                batch = self._in_flight.popleft()
                if batch.pipe >= 0:
                    self._decoders[batch.pipe].outputs()
        except RuntimeError:  # a bad clip among batches nobody will see
            self._in_flight.clear()
            self._build_decoders()

    def _finish_epoch(self) -> None:
        """Drop what is in flight, run the reader to the end of the epoch and start the next one."""
        self._discard_in_flight()
        while self._reader_pos < len(self._plan):
            self._run_reader()
            self._reader_pos += 1
        self.epoch += 1
        self._reader_pos = 0
        self._active = False
        self._state = {**self._reader_state(), "generator": self._generator.get_state()}

    # --- exact resume -----------------------------------------------------------------------------------

    def _fingerprint(self) -> dict:
        return {"samples": self.shards.num_samples, "batch_size": self.cfg.batch_size,
                "shard_id": self.shard_id, "num_shards": self.num_shards, "mode": self.cfg.mode}

    def state_dict(self) -> dict:
        """Reader position and random state after the last batch returned (save it with the checkpoint)."""
        return {**self._state, "skipped": [vars(s) for s in self.skipped]}

    def load_state_dict(self, state: dict) -> None:
        """Resume where `state_dict()` was taken: the next batches are those the saved run would have seen."""
        if state["fingerprint"] != self._fingerprint():
            raise ValueError(f"loader state was saved for {state['fingerprint']}, this loader is "
                             f"{self._fingerprint()}: resume with the same shards, batch_size and world size")
        self._stop_feeder()
        self._discard_in_flight()
        self._reader = reader_pipeline(self.cfg, self.shards, self.shard_id, self.num_shards,
                                       checkpoint=state["reader"])
        self.epoch, self._reader_pos = state["epoch"], state["reader_pos"]
        self._generator.set_state(state["generator"])
        self.skipped = [_Skipped(**s) for s in state.get("skipped", [])]
        self._active = False
        self._state = {k: v for k, v in state.items() if k != "skipped"}
