"""`datasets.Image` columns for study datasets: real COVID-19 collection images and a miniature MIMIC-CXR tree."""

from __future__ import annotations

import datasets
import pytest
import torch
from PIL import Image

from eir.data import load_study_dataset
from eir.data.hf_datasets import IMAGE_COLUMN, load_image_dataset, to_image_dataset
from eir.hf_trainer import EIRDataCollator
from processing_eir import EIRImageProcessor, EIRProcessor, train_eir_tokenizer
from test_data_mimic_cxr import write_mimic_tree


def test_covid_images_decode(data_root):
    dataset = load_image_dataset("covid_chestxray", data_dir=data_root)

    assert sorted(dataset) == ["test", "train", "validation"]
    train = dataset["train"]
    assert train.features[IMAGE_COLUMN] == datasets.List(datasets.Image())
    row = train[0]
    assert len(row[IMAGE_COLUMN]) == len(row["image_paths"])
    image = row[IMAGE_COLUMN][0]
    assert isinstance(image, Image.Image)
    with Image.open(row["image_paths"][0]) as original:
        assert image.size == original.size
    # The decoded image and the file give the same model input.
    processor = EIRImageProcessor()
    torch.testing.assert_close(processor(image)["pixel_values"], processor(row["image_paths"][0])["pixel_values"])


def test_covid_images_undecoded_without_paths(data_root):
    dataset = load_study_dataset("covid_chestxray", data_dir=data_root)["validation"].select(range(2))
    converted = to_image_dataset(dataset, decode=False, keep_paths=False)

    assert "image_paths" not in converted.column_names
    value = converted[0][IMAGE_COLUMN][0]
    assert value["path"] == dataset[0]["image_paths"][0]
    assert converted[0]["report"] == dataset[0]["report"]


def test_mimic_tree_image_dataset(tmp_path):
    root = write_mimic_tree(tmp_path / "mimic-cxr-jpg")
    dataset = load_image_dataset("mimic_cxr", data_dir=root)

    study = next(row for row in dataset["train"] if row["study_id"] == "50414267")
    assert study["views"] == ["PA", "L"]
    images = study[IMAGE_COLUMN]
    assert [image.size for image in images] == [(24, 20), (24, 20)]
    # View order is kept: the PA image was written second with the brighter shade.
    assert images[0].convert("L").getpixel((5, 5)) > images[1].convert("L").getpixel((5, 5))


def test_collator_reads_image_column(tmp_path):
    root = write_mimic_tree(tmp_path / "mimic-cxr-jpg")
    rows = list(load_image_dataset("mimic_cxr", data_dir=root, keep_paths=False)["train"])
    tokenizer = train_eir_tokenizer([row["report"] for row in rows] + [row["history"] for row in rows], tmp_path / "tokenizer", vocab_size=300)
    batch = EIRDataCollator(EIRProcessor(image_processor=EIRImageProcessor(size=32), tokenizer=tokenizer))(rows)

    assert batch["pixel_values"].shape == (2, 2, 3, 32, 32)
    assert batch["pixel_mask"].tolist() == [[1, 1], [1, 0]]
    assert batch["labels"].shape[0] == 2


def test_rejects_datasets_without_paths():
    dataset = datasets.Dataset.from_dict({"report": ["a"]})
    with pytest.raises(ValueError, match="image_paths"):
        to_image_dataset(dataset)
    with pytest.raises(TypeError, match="Dataset or DatasetDict"):
        to_image_dataset([{"image_paths": []}])
