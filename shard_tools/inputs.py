"""Finding the clips of a collection, their labels and splits, in the layouts users have on disk.

- a folder per class (UCF101 and HMDB51 ship this way): `root/<class>/<clip>`, split `train`;
- an unlabelled folder (videos at any depth, or `--unlabelled`): split `all`, no labels;
- label files given with `--labels` (or a CSV as the input itself):
  UCF101 (`classInd.txt`, `trainlist0N.txt`, `testlist0N.txt`), HMDB51 (`<class>_test_split<N>.txt`, flags
  1 = train, 2 = test, 0 = unused), Kinetics CSVs (`label,youtube_id,time_start,time_end,split`, files
  `<youtube_id>_<start:06d>_<end:06d>.<ext>`), Something-Something V2 (`labels.json` and `train.json` /
  `validation.json` / `test.json`, files `<id>.webm`), or a plain CSV/TSV of `path,label[,split]`.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp",
                    ".ogv", ".ts", ".mts")
SPLIT_ORDER = ("train", "val", "test", "all")
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validate": "val",
               "validation": "val", "test": "test", "testing": "test"}


class InputError(Exception):
    """A problem with the user's input (missing file, bad label file, empty collection); the message says what."""


@dataclass(frozen=True)
class Clip:
    path: Path  # the file
    source: str  # path relative to the input root (as written in the sample's json)
    split: str
    label: str | None
    extra: tuple[tuple[str, str], ...] = ()  # a list's columns beyond path, label, split: (name, value) pairs


@dataclass
class Collection:
    layout: str
    root: Path
    clips: list[Clip]
    classes: list[str]  # label names in label-index order ([] when unlabelled)
    missing: list[tuple[str, str]] = field(default_factory=list)  # (label file, entry) that name no file
    unused: int = 0  # clips a split file lists as not used in this split (HMDB51 flag 0)

    def label_index(self, clip: Clip) -> int:
        return -1 if clip.label is None else self._indices[clip.label]

    def __post_init__(self):
        self._indices = {name: i for i, name in enumerate(self.classes)}


def load_collection(input_path: str | Path, labels: str | Path | None = None, split_id: int = 1,
                    unlabelled: bool = False, skip_missing: bool = False, val_fraction: float = 0.0,
                    seed: int = 0) -> Collection:
    """The clips of a collection, with labels and splits, sorted by split then source path."""
    input_path = Path(input_path)
    if not input_path.exists():
        raise InputError(f"input {input_path} does not exist")
    if labels is not None:
        labels = Path(labels)
        if not labels.exists():
            raise InputError(f"label file {labels} does not exist")
        if not input_path.is_dir():
            raise InputError(f"with --labels, the input must be the folder holding the videos; {input_path} is a file")
        collection = from_label_file(input_path, labels, split_id)
    elif input_path.is_file():
        if input_path.suffix.lower() not in (".csv", ".tsv", ".txt"):
            raise InputError(f"input {input_path} is a file but not a CSV/TSV list of `path,label`; give a folder of "
                             f"videos, or a list file")
        collection = from_csv_file(input_path.parent, input_path)
    else:
        collection = from_folder(input_path, unlabelled)
    if collection.missing and not skip_missing:
        source, entry = collection.missing[0]
        raise InputError(f"{source} names {len(collection.missing)} video(s) that are not under "
                         f"{collection.root}, e.g. {entry!r}; fix the paths, or pass --skip-missing to list them in "
                         f"rejected.jsonl and go on")
    if not collection.clips:
        raise InputError(f"no video files ({', '.join(VIDEO_EXTENSIONS[:4])}, ...) found for {input_path}"
                         + (f" with labels {labels}" if labels else ""))
    first_listing = {}
    for clip in collection.clips:
        if first_listing.setdefault(clip.path, clip) is not clip:
            raise InputError(f"{relative(clip.path, collection.root)} is listed twice "
                             f"({first_listing[clip.path].split}, {clip.split})"
                             + (f" in {labels}" if labels else "") + "; every video may appear once")
    if val_fraction:
        collection.clips = split_off_val(collection, val_fraction, seed)
    collection.clips.sort(key=lambda c: (SPLIT_ORDER.index(c.split), c.source))
    return collection


# --- folders -------------------------------------------------------------------------------------------------

def find_videos(root: Path) -> list[Path]:
    """Video files under root (any depth), hidden files and folders left out, sorted."""
    found = []
    for folder, subfolders, files in os.walk(root, followlinks=True):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        found += [Path(folder) / f for f in files
                  if not f.startswith(".") and Path(f).suffix.lower() in VIDEO_EXTENSIONS]
    return sorted(found)


def relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def from_folder(root: Path, unlabelled: bool) -> Collection:
    videos = find_videos(root)
    if not videos:
        raise InputError(f"no video files ({', '.join(VIDEO_EXTENSIONS[:4])}, ...) under {root}")
    depths = {len(v.relative_to(root).parts) for v in videos}
    if unlabelled or depths == {1}:
        return Collection("unlabelled", root, [Clip(v, relative(v, root), "all", None) for v in videos], [])
    if depths != {2}:
        top = next(v for v in videos if len(v.relative_to(root).parts) != 2)
        raise InputError(f"{root} is not a folder per class: {relative(top, root)} is not at <class>/<file>. Point "
                         f"the input at the folder that holds the class folders, pass --unlabelled to take every "
                         f"video without labels, or give the label files with --labels")
    clips = [Clip(v, relative(v, root), "train", v.parent.name) for v in videos]
    return Collection("folder", root, clips, sorted({c.label for c in clips}))


# --- label files ---------------------------------------------------------------------------------------------

def from_label_file(root: Path, labels: Path, split_id: int) -> Collection:
    folder = labels if labels.is_dir() else labels.parent
    if (folder / "classInd.txt").is_file():
        return from_ucf101(root, folder, split_id)
    if list(folder.glob("*_test_split[0-9].txt")):
        return from_hmdb51(root, folder, split_id)
    if list(folder.glob("*labels.json")):
        return from_ssv2(root, folder)
    if labels.is_file() and labels.suffix.lower() in (".csv", ".tsv", ".txt") or list(folder.glob("*.csv")):
        return from_csv_file(root, labels)
    raise InputError(f"cannot tell what {labels} is: expected UCF101 split files (classInd.txt, trainlist01.txt, ...), "
                     f"HMDB51 split files (<class>_test_split1.txt, ...), Something-Something V2 labels (labels.json, "
                     f"train.json, validation.json), a Kinetics CSV (label,youtube_id,time_start,time_end,split) or "
                     f"a CSV/TSV of path,label")


class FileIndex:
    """Finds videos by file name or stem anywhere under the root (one directory walk, done on first use)."""

    def __init__(self, root: Path):
        self.root = root
        self._by_name: dict[str, list[Path]] | None = None

    def _build(self):
        self._by_name = defaultdict(list)
        for video in find_videos(self.root):
            self._by_name[video.name].append(video)
            self._by_name[video.stem].append(video)

    def find(self, relative_path: str, label_file: Path, by_stem: bool = False) -> Path | None:
        """root/relative_path if it exists, else the one video under root with that name (or stem)."""
        direct = self.root / relative_path
        if not by_stem and direct.is_file():
            return direct
        if self._by_name is None:
            self._build()
        key = Path(relative_path).stem if by_stem else Path(relative_path).name
        matches = self._by_name.get(key, [])
        if len(matches) > 1:
            raise InputError(f"{label_file} names {relative_path!r}, and several files under {self.root} match it: "
                             f"{', '.join(relative(m, self.root) for m in matches[:3])}")
        return matches[0] if matches else None


@contextmanager
def reading(path: Path, what: str):
    """Turn a malformed line or entry of a label file into an InputError that names the file and the entry."""
    try:
        yield
    except (ValueError, KeyError, IndexError, TypeError) as error:
        detail = f"missing field {error}" if isinstance(error, KeyError) else f"{type(error).__name__}: {error}"
        raise InputError(f"{path}: cannot read {what} ({detail}); is this the right label file?") from None


def read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]


def from_ucf101(root: Path, folder: Path, split_id: int) -> Collection:
    class_file = folder / "classInd.txt"
    classes = {}
    for line in read_lines(class_file):
        with reading(class_file, f"line {line!r}, expected '<number> <class name>'"):
            number, name = line.split(maxsplit=1)
            classes[int(number)] = name
    if sorted(classes) != list(range(1, len(classes) + 1)):
        raise InputError(f"{class_file}: class numbers must run 1..N, found {sorted(classes)[:5]}...")
    names = [classes[i] for i in range(1, len(classes) + 1)]
    index = FileIndex(root)
    clips, missing = [], []
    for split, stem in (("train", "trainlist"), ("test", "testlist")):
        list_file = folder / f"{stem}{split_id:02d}.txt"
        if not list_file.is_file():
            raise InputError(f"UCF101 split file {list_file} does not exist (--split-id {split_id}; UCF101 has 1..3)")
        for line in read_lines(list_file):
            entry = line.split()[0]
            label = entry.split("/")[0]
            if label not in names:
                raise InputError(f"{list_file}: {entry!r} is in class folder {label!r}, which {class_file} does "
                                 f"not list")
            path = index.find(entry, list_file)
            if path is None:
                missing.append((str(list_file), entry))
            else:
                clips.append(Clip(path, relative(path, root), split, label))
    return Collection("ucf101", root, clips, names, missing)


def from_hmdb51(root: Path, folder: Path, split_id: int) -> Collection:
    split_files = sorted(folder.glob(f"*_test_split{split_id}.txt"))
    if not split_files:
        raise InputError(f"no HMDB51 split files *_test_split{split_id}.txt in {folder} (--split-id {split_id}; "
                         f"HMDB51 has 1..3)")
    index = FileIndex(root)
    clips, missing, unused, names = [], [], 0, []
    for split_file in split_files:
        label = split_file.name[: -len(f"_test_split{split_id}.txt")]
        names.append(label)
        for line in read_lines(split_file):
            with reading(split_file, f"line {line!r}, expected '<video file> <flag 0, 1 or 2>'"):
                name, flag = line.split()
            if flag == "0":
                unused += 1
                continue
            if flag not in ("1", "2"):
                raise InputError(f"{split_file}: flag {flag!r} for {name} is not 0, 1 or 2")
            path = index.find(f"{label}/{name}", split_file)
            if path is None:
                missing.append((str(split_file), name))
            else:
                clips.append(Clip(path, relative(path, root), "train" if flag == "1" else "test", label))
    return Collection("hmdb51", root, clips, sorted(names), missing, unused)


def from_ssv2(root: Path, folder: Path) -> Collection:
    label_file = sorted(folder.glob("*labels.json"))[0]
    with reading(label_file, "the template -> label index mapping"):
        templates = json.loads(label_file.read_text())
        names = sorted(templates, key=lambda name: int(templates[name]))
    if [int(templates[n]) for n in names] != list(range(len(names))):
        raise InputError(f"{label_file}: label indices must run 0..N-1")
    index = FileIndex(root)
    clips, missing = [], []
    for split, suffix in (("train", "train.json"), ("val", "validation.json"), ("test", "test.json")):
        for list_file in sorted(folder.glob(f"*{suffix}")):
            with reading(list_file, "a JSON list of {'id': ..., 'template': ...} entries"):
                entries = json.loads(list_file.read_text())
            for entry in entries:
                with reading(list_file, f"entry {entry!r}, expected {{'id': ..., 'template': ...}}"):
                    video = f"{entry['id']}.webm"
                label = None
                if "template" in entry:
                    label = entry["template"].replace("[", "").replace("]", "")
                    if label not in templates:
                        raise InputError(f"{list_file}: video {entry['id']}'s template {label!r} is not in "
                                         f"{label_file}")
                path = index.find(video, list_file, by_stem=True)
                if path is None:
                    missing.append((str(list_file), video))
                else:
                    clips.append(Clip(path, relative(path, root), split, label))
    if not clips and not missing:
        raise InputError(f"{folder} has {label_file.name} but no train.json / validation.json / test.json lists")
    return Collection("ssv2", root, clips, names, missing)


def sniff_rows(path: Path) -> list[list[str]]:
    text = path.read_text(encoding="utf-8-sig")
    first = text.split("\n", 1)[0]
    delimiter = "\t" if path.suffix.lower() == ".tsv" or "\t" in first else ","
    return [row for row in csv.reader(text.splitlines(), delimiter=delimiter) if any(cell.strip() for cell in row)]


def from_csv_file(root: Path, labels: Path) -> Collection:
    """A Kinetics annotation CSV (or a folder of them), or a plain `path,label[,split]` list."""
    files = sorted(labels.glob("*.csv")) if labels.is_dir() else [labels]
    tables = {f: sniff_rows(f) for f in files}
    kinetics = [f for f, rows in tables.items() if rows and "youtube_id" in [c.strip() for c in rows[0]]]
    if kinetics:
        if len(kinetics) != len(files):
            other = next(f for f in files if f not in kinetics)
            raise InputError(f"{other} is not a Kinetics annotation CSV (no youtube_id column) but sits beside them")
        return from_kinetics(root, tables)
    if len(files) != 1:
        raise InputError(f"{labels} holds several CSVs ({', '.join(f.name for f in files[:3])}); give one with "
                         f"--labels")
    return from_list(root, files[0], tables[files[0]])


def from_kinetics(root: Path, tables: dict[Path, list[list[str]]]) -> Collection:
    index = FileIndex(root)
    clips, missing = [], []
    for csv_file, rows in tables.items():
        header = [c.strip() for c in rows[0]]
        for needed in ("youtube_id", "time_start", "time_end"):
            if needed not in header:
                raise InputError(f"{csv_file}: Kinetics CSV without a {needed!r} column (header {header})")
        default_split = SPLIT_NAMES.get(csv_file.stem.lower().split("_")[-1])
        for row in rows[1:]:
            cells = dict(zip(header, (cell.strip() for cell in row)))
            with reading(csv_file, f"row {row}, expected youtube_id and whole-second time_start, time_end"):
                start, end = int(float(cells["time_start"])), int(float(cells["time_end"]))
            name = f"{cells['youtube_id']}_{start:06d}_{end:06d}"
            split = SPLIT_NAMES.get(cells.get("split", "").lower(), default_split)
            if split is None:
                raise InputError(f"{csv_file}: row {name} has split {cells.get('split')!r}; expected train, val(idate) "
                                 f"or test")
            path = index.find(name, csv_file, by_stem=True)
            if path is None:
                missing.append((str(csv_file), name))
            else:
                clips.append(Clip(path, relative(path, root), split, cells.get("label") or None))
    names = sorted({c.label for c in clips if c.label is not None})
    return Collection("kinetics", root, clips, names, missing)


def from_list(root: Path, list_file: Path, rows: list[list[str]]) -> Collection:
    header = ["path", "label", "split"]
    if rows and rows[0][0].strip().lower() == "path":
        header, rows = [c.strip().lower() for c in rows[0]], rows[1:]
    entries = []
    for row in rows:
        cells = dict(zip(header, (cell.strip() for cell in row)))
        split = SPLIT_NAMES.get(cells["split"].lower()) if cells.get("split") else ""
        if split is None:
            raise InputError(f"{list_file}: {cells['path']!r} has split {cells['split']!r}; expected train, val "
                             f"or test")
        extra = tuple((k, v) for k, v in cells.items() if k not in ("path", "label", "split"))
        entries.append((cells["path"], cells.get("label") or None, split, extra))
    labels = {label for _, label, _, _ in entries if label is not None}
    if labels and all(re.fullmatch(r"\d+", label) for label in labels):
        names = [str(i) for i in range(max(map(int, labels)) + 1)]  # integer labels are label indices
        entries = [(path, None if label is None else str(int(label)), split, extra)
                   for path, label, split, extra in entries]
    else:
        names = sorted(labels)
    clips, missing = [], []
    for path, label, split, extra in entries:
        full = Path(path) if Path(path).is_absolute() else root / path
        if full.is_file():
            clips.append(Clip(full, relative(full, root), split or ("train" if labels else "all"), label, extra))
        else:
            missing.append((str(list_file), path))
    return Collection("list" if labels else "unlabelled list", root, clips, names, missing)


# --- splits --------------------------------------------------------------------------------------------------

def split_off_val(collection: Collection, fraction: float, seed: int) -> list[Clip]:
    """Move a seeded, per-class `fraction` of the clips of a collection without its own splits into `val`."""
    if not 0 < fraction < 1:
        raise InputError(f"--val-fraction must be between 0 and 1, got {fraction}")
    own = {c.split for c in collection.clips}
    if own not in ({"train"}, {"all"}):
        raise InputError(f"--val-fraction is for collections without their own splits; this {collection.layout} "
                         f"collection already has {', '.join(sorted(own))}")
    by_label = defaultdict(list)
    for clip in sorted(collection.clips, key=lambda c: c.source):
        by_label[clip.label or ""].append(clip)
    clips = []
    for label in sorted(by_label):
        group = by_label[label]
        random.Random(f"{seed}:val:{label}").shuffle(group)
        num_val = round(fraction * len(group))
        clips += [Clip(c.path, c.source, "val" if i < num_val else "train", c.label) for i, c in enumerate(group)]
    return clips
