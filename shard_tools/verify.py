"""`shard-videos verify OUT`: read every shard, check its index and checksum, decode every sample.

Samples are decoded with the decoder the pipeline uses on this machine: DALI's `fn.decoders.video` on the
GPU ('mixed', NVDEC) when DALI sees one, else DALI's CPU decoder. DALI's CPU decoder reads only VP8, VP9 and
MJPEG; samples in other codecs on a machine without a GPU are decoded with PyAV instead, and the report says so
(the pipeline itself could not read them here). A sample passes when it has all its members, its `.json`
parses, `.frames` and `.label` agree with the json, and the number of decoded frames equals `.frames`.
JPEG-frame samples (`--frames jpeg`) pass when their frame offsets agree with the json and the member
(`pipeline.frames.frame_offsets`), and every stored frame decodes with DALI's image decoder at the json's size.

A folder without manifest.json (an unfinished `shard-videos` run) fails at once. What the loaders check at every
start (`pipeline.shards.find_shards`: sizes against the indexes and the manifest) is cheap; the sha256 of every
shard and the decoding of every sample are checked only here.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tarfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from pipeline import frames as jpeg_frames
from pipeline.shards import CPU_CODECS, VIDEO_EXTENSIONS, read_manifest
from shard_tools.tarshard import INDEX_VERSION

BATCH = 8  # samples per DALI run; a failing batch is decoded again sample by sample to name the bad one
JPEG_BATCH = 64  # JPEG frames per DALI run


@dataclass
class Failure:
    shard: str
    key: str  # "" for a problem with the whole shard
    problem: str


@dataclass
class Report:
    shards: int = 0
    samples: int = 0
    decoders: Counter = field(default_factory=Counter)  # decoder name -> samples it decoded
    notes: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures and self.samples > 0


@dataclass
class Sample:
    shard: str
    key: str
    members: dict[str, bytes]
    video: bytes = b""  # set by check_members, with the fields below
    frames: int = -1
    codec: str = ""
    jpegs: list[np.ndarray] = field(default_factory=list)  # JPEG-frame samples: every stored frame
    size: tuple[int, int] = (0, 0)  # (height, width) from the json


def verify(out: str | Path, device: str = "auto", num_threads: int = 2, progress=None) -> Report:
    """Check every shard in `out`; device is 'auto', 'cpu' or 'gpu'."""
    out = Path(out)
    report = Report()
    manifest = read_manifest(out)  # raises, naming the fix, on an unfinished run
    listed = manifest["shards"]
    tars = [out / s["name"] for s in listed]
    checksums = {s["name"]: s["sha256"] for s in listed}
    for stray in sorted(set(out.glob("*-[0-9][0-9][0-9][0-9][0-9][0-9].tar")) - set(tars)):
        report.failures.append(Failure(stray.name, "", "shard not listed in manifest.json"))
    if not tars:
        raise FileNotFoundError(f"no shards (<split>-NNNNNN.tar) in {out}")
    use_gpu = gpu_available() if device == "auto" else device == "gpu"
    decoder = Decoder(use_gpu, num_threads)
    jpeg = manifest.get("frames") is not None
    report.notes.append(f"decoder: DALI fn.decoders.{'image' if jpeg else 'video'}, " + (
        f"'mixed' ({'nvJPEG' if jpeg else 'NVDEC'} on the GPU)" if use_gpu else
        "CPU backend (no GPU seen by DALI)" if device == "auto" else "CPU backend (--device cpu)"))
    task = progress.add_task("verifying", total=len(tars)) if progress else None
    for tar in tars:
        report.shards += 1
        samples = check_shard(tar, checksums[tar.name], report)
        report.samples += len(samples)
        good = [s for s in samples if check_members(s, report)]
        decoder.check(good, report)
        if progress:
            progress.update(task, advance=1)
    pyav = decoder.pyav_codecs
    if pyav:
        report.notes.append(
            f"{sum(pyav.values())} sample(s) in {', '.join(sorted(pyav))} were decoded with PyAV, not with the "
            f"pipeline's decoder: DALI's CPU decoder reads only {', '.join(CPU_CODECS)} and DALI sees no GPU "
            f"here. Run `shard-videos verify` on the GPU machine to check them with NVDEC.")
    return report


def gpu_available() -> bool:
    from nvidia.dali import backend
    return backend.GetCUDADeviceCount() > 0


def check_shard(tar: Path, sha256: str, report: Report) -> list[Sample]:
    """The samples of one shard; shard-level problems (checksum, index) go to the report."""
    if not tar.is_file():
        report.failures.append(Failure(tar.name, "", "shard listed in manifest.json is missing"))
        return []
    digest = hashlib.sha256()
    with open(tar, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != sha256:
        report.failures.append(Failure(tar.name, "", "sha256 differs from manifest.json (the file changed)"))
    samples: dict[str, Sample] = {}
    lines: dict[str, list[str]] = defaultdict(list)
    try:
        with tarfile.open(tar) as archive:
            for member in archive:
                if not member.isfile():
                    continue
                key, _, extension = member.name.partition(".")
                sample = samples.setdefault(key, Sample(tar.name, key, {}))
                sample.members[extension] = archive.extractfile(member).read()
                lines[key].append(f"{extension} {member.offset_data} {member.size} {member.name}")
    except (tarfile.TarError, OSError) as error:
        report.failures.append(Failure(tar.name, "", f"unreadable tar: {error}"))
    expected = f"{INDEX_VERSION} {len(samples)}\n" + "\n".join(" ".join(v) for v in lines.values()) + "\n"
    index = tar.with_suffix(".idx")
    if not index.is_file():
        report.failures.append(Failure(tar.name, "", f"index {index.name} is missing"))
    elif index.read_text() != expected:
        report.failures.append(Failure(tar.name, "", f"index {index.name} does not match the tar's members"))
    return list(samples.values())


def check_members(sample: Sample, report: Report) -> bool:
    def fail(problem: str) -> bool:
        report.failures.append(Failure(sample.shard, sample.key, problem))
        return False

    videos = [e for e in sample.members if e in (*VIDEO_EXTENSIONS, jpeg_frames.EXTENSION)]
    missing = [e for e in ("json", "frames", "label") if e not in sample.members]
    if len(videos) != 1 or missing:
        return fail(f"members {sorted(sample.members)}: need one video ({'/'.join(VIDEO_EXTENSIONS)}) or JPEG "
                    f"frames ({jpeg_frames.EXTENSION}), json, frames and label")
    try:
        meta = json.loads(sample.members["json"])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return fail(f".json does not parse: {error}")
    if len(sample.members["frames"]) != 4 or len(sample.members["label"]) != 4:
        return fail(".frames and .label must be 4 bytes each")
    frames, = struct.unpack("<i", sample.members["frames"])
    label, = struct.unpack("<i", sample.members["label"])
    if frames != meta.get("num_frames") or label != meta.get("label_index"):
        return fail(f".frames/.label ({frames}, {label}) disagree with the json ({meta.get('num_frames')}, "
                    f"{meta.get('label_index')})")
    sample.video = sample.members[videos[0]]
    sample.frames, sample.codec = frames, str(meta.get("codec", "")).lower()
    sample.size = (meta.get("height"), meta.get("width"))
    if videos[0] == jpeg_frames.EXTENSION:
        try:
            offsets = jpeg_frames.frame_offsets(meta, len(sample.video))
        except jpeg_frames.FrameError as error:
            return fail(str(error))
        data = np.frombuffer(sample.video, np.uint8)
        sample.jpegs = [data[offsets[k]:offsets[k + 1]] for k in range(len(offsets) - 1)]
    return True


class Decoder:
    """Decodes samples with DALI (per batch, then per sample for a failing batch) or, where DALI cannot on this
    machine, with PyAV; counts the decoded frames."""

    def __init__(self, use_gpu: bool, num_threads: int):
        self.use_gpu, self.num_threads = use_gpu, num_threads
        self.pipes: dict[tuple[int, bool], object] = {}
        self.pyav_codecs: Counter = Counter()

    def check(self, samples: list[Sample], report: Report) -> None:
        for sample in samples:
            if sample.jpegs:
                self.check_jpegs(sample, report)
        samples = [s for s in samples if not s.jpegs]
        dali = [s for s in samples if self.use_gpu or s.codec in CPU_CODECS]
        for sample in samples:
            if sample not in dali:
                self.pyav_codecs[sample.codec] += 1
                report.decoders["PyAV (CPU)"] += 1
                self.compare(sample, pyav_count(sample.video), report)
        name = "DALI mixed (NVDEC)" if self.use_gpu else "DALI CPU"
        for start in range(0, len(dali), BATCH):
            batch = dali[start:start + BATCH]
            report.decoders[name] += len(batch)
            try:
                counts = self.dali_counts(batch)
            except RuntimeError:
                counts = []
                for sample in batch:
                    try:
                        counts += self.dali_counts([sample])
                    except RuntimeError as error:
                        counts.append(f"DALI cannot decode it: {first_line(error)}")
            for sample, count in zip(batch, counts):
                self.compare(sample, count, report)

    @staticmethod
    def compare(sample: Sample, count: int | str, report: Report) -> None:
        if isinstance(count, str):
            report.failures.append(Failure(sample.shard, sample.key, count))
        elif count != sample.frames:
            report.failures.append(Failure(sample.shard, sample.key, f"{count} frames decode, .frames says "
                                                                     f"{sample.frames}"))

    def dali_counts(self, batch: list[Sample]) -> list[int]:
        pipe = self.pipeline(len(batch))
        pipe.feed_input("encoded", [np.frombuffer(s.video, np.uint8) for s in batch])
        try:
            frames, = pipe.run()
        except RuntimeError:
            del self.pipes[len(batch), False]  # start from a fresh pipeline after an error
            raise
        return [int(shape[0]) for shape in frames.shape()]

    def check_jpegs(self, sample: Sample, report: Report) -> None:
        """Every stored frame of a JPEG-frame sample decodes, at the json's size (a failing chunk is decoded again
        frame by frame to name the frame)."""
        name = "DALI mixed (nvJPEG)" if self.use_gpu else "DALI CPU"
        report.decoders[name] += 1
        for start in range(0, len(sample.jpegs), JPEG_BATCH):
            chunk = sample.jpegs[start:start + JPEG_BATCH]
            try:
                shapes = self.jpeg_shapes(chunk)
            except RuntimeError:
                for k, jpeg in enumerate(chunk, start):
                    try:
                        self.jpeg_shapes([jpeg])
                    except RuntimeError as error:
                        return report.failures.append(Failure(sample.shard, sample.key, f"stored frame {k} does "
                                                              f"not decode: {first_line(error)}"))
                continue  # every frame decodes alone: a DALI batch problem, not the sample's
            for k, (height, width) in enumerate(shapes, start):
                if (height, width) != tuple(sample.size):
                    return report.failures.append(Failure(sample.shard, sample.key, f"stored frame {k} is "
                                                          f"{width}x{height}, the json says {sample.size[1]}x"
                                                          f"{sample.size[0]}"))

    def jpeg_shapes(self, jpegs: list[np.ndarray]) -> list[tuple[int, int]]:
        pipe = self.pipeline(JPEG_BATCH, image=True)
        pipe.feed_input("encoded", jpegs)
        try:
            images, = pipe.run()
        except RuntimeError:
            del self.pipes[JPEG_BATCH, True]
            raise
        return [(int(shape[0]), int(shape[1])) for shape in images.shape()]

    def pipeline(self, batch_size: int, image: bool = False):
        if (batch_size, image) not in self.pipes:
            from nvidia.dali import fn, pipeline_def, types

            @pipeline_def(batch_size=batch_size, num_threads=self.num_threads,
                          device_id=0 if self.use_gpu else None, prefetch_queue_depth=1)
            def decode():
                encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
                device = "mixed" if self.use_gpu else "cpu"
                if image:
                    return fn.decoders.image(encoded, device=device, output_type=types.RGB)
                return fn.decoders.video(encoded, device=device)

            pipe = decode()
            pipe.build()
            self.pipes[batch_size, image] = pipe
        return self.pipes[batch_size, image]


def pyav_count(video: bytes) -> int | str:
    try:
        with av.open(io.BytesIO(video)) as container:
            return sum(1 for _ in container.decode(video=0))
    except Exception as error:
        return f"PyAV cannot decode it: {type(error).__name__}: {error}"


def first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if "failed" in line.lower() or "error" in line.lower()]
    return (useful[-1] if useful else lines[-1] if lines else type(error).__name__)[:200]
