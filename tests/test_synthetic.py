"""The synthetic COCO set: valid COCO, decodable JPEGs, exact boxes, deterministic for a seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from runtime.image_io import read_image
from trainer.data import synthetic

NUM_TRAIN, NUM_VAL = 6, 3
# pycocotools 2.0.x trips a numpy 2 deprecation inside mask.decode; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return synthetic.generate(tmp_path_factory.mktemp("synth"), NUM_TRAIN, NUM_VAL, seed=3)


def _coco(path: Path) -> COCO:
    return COCO(str(path))


def test_standard_coco_layout(synth):
    root = synth["root"]
    assert synth["train_ann"] == root / "annotations" / "instances_train2017.json"
    assert synth["val_ann"] == root / "annotations" / "instances_val2017.json"
    assert synth["train_images"] == root / "train2017" and synth["val_images"] == root / "val2017"
    assert len(list(synth["train_images"].glob("*.jpg"))) == NUM_TRAIN
    assert len(list(synth["val_images"].glob("*.jpg"))) == NUM_VAL


@pytest.mark.parametrize("split", ["train", "val"])
def test_valid_coco_with_exact_boxes_inside_images(synth, split):
    coco = _coco(synth[f"{split}_ann"])
    assert sorted(coco.getCatIds()) == [1, 3, 7]
    assert [c["name"] for c in coco.loadCats([1, 3, 7])] == ["square", "disc", "triangle"]
    img_ids = coco.getImgIds()
    assert len(img_ids) == {"train": NUM_TRAIN, "val": NUM_VAL}[split]
    sizes = set()
    for img_id in img_ids:
        info = coco.imgs[img_id]
        image = read_image(synth[f"{split}_images"] / info["file_name"])
        assert image.shape == (info["height"], info["width"], 3) and image.dtype == np.uint8
        sizes.add(image.shape[:2])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_id]))
        objects = [a for a in anns if not a["iscrowd"]]
        assert 1 <= len(objects) <= 4
        for a in anns:
            x, y, w, h = a["bbox"]
            assert x >= 0 and y >= 0 and x + w <= info["width"] and y + h <= info["height"]
            assert a["area"] > 0 and a["area"] <= w * h
            assert a["category_id"] in (1, 3, 7)
            if not a["iscrowd"]:
                assert synthetic.MIN_BOX - 2 <= max(w, h) <= synthetic.MAX_BOX
    assert len(sizes) > 1


@pytest.mark.parametrize("split", ["train", "val"])
def test_one_crowd_whose_rle_matches_bbox_and_area(synth, split):
    coco = _coco(synth[f"{split}_ann"])
    crowds = [a for a in coco.dataset["annotations"] if a["iscrowd"]]
    assert len(crowds) == 1
    crowd = crowds[0]
    info = coco.imgs[crowd["image_id"]]
    rle = mask_utils.frPyObjects(crowd["segmentation"], info["height"], info["width"])
    mask = mask_utils.decode(rle)
    assert mask.sum() == crowd["area"]
    np.testing.assert_array_equal(mask_utils.toBbox(rle), crowd["bbox"])


def test_tight_box_and_rle_helpers():
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True
    mask[0, 0] = True  # a run starting at the very first pixel
    assert synthetic._tight_box(mask) == [0.0, 0.0, 9.0, 5.0]
    rle = synthetic._rle(mask)
    decoded = mask_utils.decode(mask_utils.frPyObjects(rle, 10, 12))
    np.testing.assert_array_equal(decoded.astype(bool), mask)


def test_image_and_category_ids_do_not_collide(synth):
    train = json.loads(synth["train_ann"].read_text())
    val = json.loads(synth["val_ann"].read_text())
    assert not {i["id"] for i in train["images"]} & {i["id"] for i in val["images"]}
    assert [c["id"] for c in train["categories"]] == [1, 3, 7]
    ann_ids = [a["id"] for a in train["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids)


def test_deterministic_for_a_seed(tmp_path, synth):
    again = synthetic.generate(tmp_path / "again", NUM_TRAIN, NUM_VAL, seed=3)
    other = synthetic.generate(tmp_path / "other", NUM_TRAIN, NUM_VAL, seed=4)
    assert again["train_ann"].read_bytes() == synth["train_ann"].read_bytes()
    assert again["val_ann"].read_bytes() == synth["val_ann"].read_bytes()
    for jpg in synth["train_images"].glob("*.jpg"):
        assert (again["train_images"] / jpg.name).read_bytes() == jpg.read_bytes()
    assert other["train_ann"].read_bytes() != synth["train_ann"].read_bytes()


def test_prefix_stable_when_growing_the_set(tmp_path, synth):
    """Image i depends only on (seed, split, i): a bigger set starts with the same images."""
    bigger = synthetic.generate(tmp_path / "bigger", NUM_TRAIN + 2, NUM_VAL, seed=3)
    small = json.loads(synth["train_ann"].read_text())
    big = json.loads(bigger["train_ann"].read_text())
    assert big["images"][:NUM_TRAIN] == small["images"]
    assert big["annotations"][: len(small["annotations"])] == small["annotations"]


def test_cli_writes_set_and_reports_bad_input(tmp_path, capsys):
    out = tmp_path / "cli"
    assert synthetic.main(["--out-dir", str(out), "--num-train", "2", "--num-val", "1", "--seed", "1"]) == 0
    assert (out / "annotations" / "instances_val2017.json").is_file()
    assert str(out) in capsys.readouterr().out

    assert synthetic.main(["--out-dir", str(out), "--num-train", "0"]) == 2
    assert "--num-train" in capsys.readouterr().err
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert synthetic.main(["--out-dir", str(a_file)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_cli_help_describes_options(capsys):
    with pytest.raises(SystemExit) as exc:
        synthetic.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--out-dir", "--num-train", "--num-val", "--seed", "data/synthetic"):
        assert flag in text
