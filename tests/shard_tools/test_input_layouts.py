"""Reading collections in the layouts the public datasets ship in (real encoded files made with PyAV)."""

import json
from collections import Counter

import pytest
from fixtures_video import make_hmdb51, make_kinetics, make_ssv2, make_ucf101, write_video

from shard_tools import cli
from shard_tools.inputs import InputError, load_collection


def summary(collection):
    return Counter((c.split, c.label) for c in collection.clips)


def test_ucf101_split_files(tmp_path):
    videos, splits = make_ucf101(tmp_path, groups=3)
    classes = ["ApplyEyeMakeup", "Archery", "BabyCrawling"]
    for split_id in (1, 2, 3):
        collection = load_collection(videos, splits, split_id=split_id)
        assert collection.layout == "ucf101" and collection.classes == classes
        assert summary(collection) == {**{("train", c): 2 for c in classes}, **{("test", c): 1 for c in classes}}
        test = sorted(c.source for c in collection.clips if c.split == "test")
        assert test == [f"{c}/v_{c}_g{split_id:02d}_c01.avi" for c in classes]
        assert all(collection.label_index(c) == classes.index(c.source.split("/")[0]) for c in collection.clips)
    # the split folder can be given as any of its files, too
    assert summary(load_collection(videos, splits / "trainlist01.txt")) == summary(load_collection(videos, splits))


def test_hmdb51_flags(tmp_path):
    videos, splits = make_hmdb51(tmp_path, classes=("brush_hair", "cartwheel"), clips=3)
    collection = load_collection(videos, splits, split_id=2)
    assert collection.layout == "hmdb51" and collection.classes == ["brush_hair", "cartwheel"]
    assert summary(collection) == {("train", "brush_hair"): 1, ("test", "brush_hair"): 1,
                                   ("train", "cartwheel"): 1, ("test", "cartwheel"): 1}
    assert collection.unused == 2  # flag 0
    assert all(c.source.startswith(f"{c.label}/") for c in collection.clips)


def test_kinetics_csv(tmp_path):
    videos, annotations = make_kinetics(tmp_path, labels=("abseiling", "air drumming"),
                                        per_split={"train": 2, "val": 1})
    collection = load_collection(videos, annotations)
    assert collection.layout == "kinetics" and collection.classes == ["abseiling", "air drumming"]
    assert summary(collection) == {("train", "abseiling"): 2, ("val", "abseiling"): 1,
                                   ("train", "air drumming"): 2, ("val", "air drumming"): 1}
    # files are found by their <youtube_id>_<start>_<end> name wherever they are under the root
    assert all(c.source.startswith(f"{c.split}/{c.label}/") for c in collection.clips)


def test_ssv2_label_jsons(tmp_path):
    videos, labels = make_ssv2(tmp_path, per_split={"train": 2, "validation": 1})
    collection = load_collection(videos, labels)
    names = ["Holding something next to something", "Pushing something from left to right"]
    assert collection.layout == "ssv2" and collection.classes == names
    assert summary(collection) == {("train", names[0]): 2, ("train", names[1]): 2, ("val", names[0]): 1,
                                   ("val", names[1]): 1}
    label_map = json.loads((labels / "labels.json").read_text())
    assert all(collection.label_index(c) == int(label_map[c.label]) for c in collection.clips)


def test_plain_lists(tmp_path):
    for i, name in enumerate(["a.mp4", "b.mp4", "sub/c.mp4"]):
        write_video(tmp_path / name, num_frames=4, seed=i)
    (tmp_path / "with_header.csv").write_text("path,label,split\na.mp4,cat,train\nb.mp4,dog,val\nsub/c.mp4,cat,test\n")
    collection = load_collection(tmp_path / "with_header.csv")
    assert collection.classes == ["cat", "dog"]
    assert summary(collection) == {("train", "cat"): 1, ("val", "dog"): 1, ("test", "cat"): 1}
    (tmp_path / "numbers.tsv").write_text("a.mp4\t2\nb.mp4\t0\n")  # integer labels are label indices
    collection = load_collection(tmp_path / "numbers.tsv")
    assert collection.classes == ["0", "1", "2"]
    assert {c.source: collection.label_index(c) for c in collection.clips} == {"a.mp4": 2, "b.mp4": 0}
    (tmp_path / "paths.csv").write_text("a.mp4\nsub/c.mp4\n")
    collection = load_collection(tmp_path / "paths.csv")
    assert collection.classes == [] and {c.split for c in collection.clips} == {"all"}


def test_folders(tmp_path):
    for label in ("jump", "run"):
        for i in range(2):
            write_video(tmp_path / "classes" / label / f"{i}.avi", "mpeg4", num_frames=4, seed=i)
    (tmp_path / "classes" / "notes.txt").write_text("not a video")
    (tmp_path / "classes" / "jump" / ".hidden.mp4").write_bytes(b"macOS resource fork")
    collection = load_collection(tmp_path / "classes")
    assert collection.layout == "folder" and collection.classes == ["jump", "run"]
    assert [c.source for c in collection.clips] == ["jump/0.avi", "jump/1.avi", "run/0.avi", "run/1.avi"]
    unlabelled = load_collection(tmp_path / "classes", unlabelled=True)
    assert unlabelled.classes == [] and {(c.split, c.label) for c in unlabelled.clips} == {("all", None)}
    write_video(tmp_path / "flat" / "x.mp4", num_frames=4)
    assert load_collection(tmp_path / "flat").layout == "unlabelled"
    write_video(tmp_path / "classes" / "loose.mp4", num_frames=4)
    with pytest.raises(InputError, match="loose.mp4 is not at <class>/<file>.*--unlabelled"):
        load_collection(tmp_path / "classes")


def test_val_fraction_is_seeded_and_per_class(tmp_path):
    for label in ("a", "b"):
        for i in range(10):
            (tmp_path / label).mkdir(exist_ok=True)
            (tmp_path / label / f"{i}.mp4").write_bytes(b"placeholder: splitting never opens the files")
    first = load_collection(tmp_path, val_fraction=0.2, seed=5)
    assert summary(first) == {("train", "a"): 8, ("val", "a"): 2, ("train", "b"): 8, ("val", "b"): 2}
    assert first.clips == load_collection(tmp_path, val_fraction=0.2, seed=5).clips
    others = [load_collection(tmp_path, val_fraction=0.2, seed=s).clips for s in range(6, 9)]
    assert any(other != first.clips for other in others)
    videos, splits = make_ucf101(tmp_path / "ucf", groups=2, num_frames=4)
    with pytest.raises(InputError, match="already has test, train"):
        load_collection(videos, splits, val_fraction=0.1)


def test_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match=f"input {tmp_path / 'nope'} does not exist"):
        load_collection(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no video files .* under .*empty"):
        load_collection(tmp_path / "empty")
    videos, splits = make_ucf101(tmp_path / "ucf", groups=2, num_frames=4)
    (videos / "Archery" / "v_Archery_g02_c01.avi").unlink()
    with pytest.raises(InputError, match=r"trainlist01.txt names 1 video\(s\) that are not under .*v_Archery_g02_c01"):
        load_collection(videos, splits)
    collection = load_collection(videos, splits, skip_missing=True)
    assert collection.missing == [(str(splits / "trainlist01.txt"), "Archery/v_Archery_g02_c01.avi")]
    with pytest.raises(InputError, match="UCF101 split file .*trainlist03.txt does not exist"):
        (splits / "trainlist03.txt").unlink()
        load_collection(videos, splits, split_id=3)
    with pytest.raises(InputError, match=f"label file {tmp_path / 'labels.csv'} does not exist"):
        load_collection(videos, tmp_path / "labels.csv")
    (tmp_path / "twice.csv").write_text("path,label,split\nArchery/v_Archery_g01_c01.avi,a,train\n"
                                        "Archery/v_Archery_g01_c01.avi,a,test\n")
    with pytest.raises(InputError, match="v_Archery_g01_c01.avi is listed twice .train, test. in .*twice.csv"):
        load_collection(videos, tmp_path / "twice.csv")


def test_cli_reports_input_errors(tmp_path, capsys):
    assert cli.main([str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert f"input {tmp_path / 'missing'} does not exist" in capsys.readouterr().err
    videos, annotations = make_kinetics(tmp_path / "k", per_split={"train": 1}, num_frames=4)
    next(videos.rglob("*.mp4")).unlink()
    assert cli.main([str(videos), str(tmp_path / "out"), "--labels", str(annotations)]) == 2
    err = capsys.readouterr().err
    assert f"{annotations} names 1 video(s)" in err and "--skip-missing" in err


def test_malformed_label_files_name_the_file_and_the_entry(tmp_path):
    videos, splits = make_ucf101(tmp_path / "ucf", groups=1, num_frames=4)
    (splits / "classInd.txt").write_text("1 ApplyEyeMakeup\nArchery\n")
    with pytest.raises(InputError, match=r"classInd.txt: cannot read line 'Archery'"):
        load_collection(videos, splits)

    videos, splits = make_hmdb51(tmp_path / "hmdb", clips=1, num_frames=4)
    split_file = sorted(splits.glob("*_test_split1.txt"))[0]
    split_file.write_text(split_file.read_text() + "extra.avi 1 oops\n")
    with pytest.raises(InputError, match=rf"{split_file.name}: cannot read line 'extra.avi 1 oops'"):
        load_collection(videos, splits)

    videos, annotations = make_kinetics(tmp_path / "k", per_split={"train": 1}, num_frames=4)
    csv_file = annotations if annotations.is_file() else sorted(annotations.glob("*.csv"))[0]
    assert csv_file.read_text().startswith("label,youtube_id,time_start,time_end,split")
    csv_file.write_text(csv_file.read_text().rstrip("\n") + "\nabseiling,zz,one,10,train\n")
    with pytest.raises(InputError, match=rf"{csv_file.name}: cannot read row .*time_start"):
        load_collection(videos, annotations)

    videos, labels = make_ssv2(tmp_path / "ssv2", num_frames=4)
    train = labels / "train.json"
    train.write_text(json.dumps(json.loads(train.read_text()) + [{"template": "x"}]))
    with pytest.raises(InputError, match=r"train.json: cannot read entry .*missing field 'id'"):
        load_collection(videos, labels)
