"""Study datasets with a `datasets.Image` column, for `datasets` tooling and the Hub.

The loaders in `eir.data` keep image file paths as strings (`image_paths`). `to_image_dataset`
adds an `images` column of type `List(Image())` that `datasets` decodes to PIL images on access
and embeds as bytes when the dataset is pushed to the Hub or saved with embedded files.
`eir.hf_trainer.EIRDataCollator` reads either column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import datasets

IMAGE_COLUMN = "images"
PATH_COLUMN = "image_paths"
DatasetType = TypeVar("DatasetType", datasets.Dataset, datasets.DatasetDict)


def image_features(features: datasets.Features, column: str = IMAGE_COLUMN, decode: bool = True) -> datasets.Features:
    """Return `features` plus `column` as a list of `datasets.Image` values."""
    extended = features.copy()
    extended[column] = datasets.List(datasets.Image(decode=decode))
    return extended


def _add_image_column(dataset: datasets.Dataset, column: str, decode: bool, keep_paths: bool) -> datasets.Dataset:
    if PATH_COLUMN not in dataset.column_names:
        raise ValueError(
            f"to_image_dataset: expected a {PATH_COLUMN!r} column (as the loaders of eir.data return), got the columns "
            f"{dataset.column_names}."
        )
    if column in dataset.column_names:
        raise ValueError(f"to_image_dataset: the dataset already has a {column!r} column; pass another column name.")
    converted = dataset.map(
        lambda batch: {column: batch[PATH_COLUMN]},
        batched=True,
        features=image_features(dataset.features, column, decode),
        desc="Adding image column",
    )
    return converted if keep_paths else converted.remove_columns(PATH_COLUMN)


def to_image_dataset(
    dataset: DatasetType,
    column: str = IMAGE_COLUMN,
    decode: bool = True,
    keep_paths: bool = True,
) -> DatasetType:
    """Add a `List(Image())` column built from `image_paths` to a study `Dataset` or every split of a `DatasetDict`.

    Args:
        dataset: study records as returned by `eir.data.load_study_dataset`.
        column: name of the new column.
        decode: True returns PIL images on access. False returns `{"bytes": None, "path": ...}` dicts.
        keep_paths: keep the `image_paths` column beside the new one.

    The images are read when a row is accessed, not here. A dataset of an image folder whose
    files move must be rebuilt.
    """
    if isinstance(dataset, datasets.DatasetDict):
        return datasets.DatasetDict(
            {split: _add_image_column(part, column, decode, keep_paths) for split, part in dataset.items()}
        )
    if isinstance(dataset, datasets.Dataset):
        return _add_image_column(dataset, column, decode, keep_paths)
    raise TypeError(f"to_image_dataset: expected a datasets.Dataset or DatasetDict, got {type(dataset).__name__}.")


def load_image_dataset(
    name: str,
    data_dir: str | Path | None = None,
    decode: bool = True,
    keep_paths: bool = True,
    **loader_kwargs: Any,
) -> datasets.DatasetDict:
    """Load a study dataset with `eir.data.load_study_dataset` and add its `images` column (`to_image_dataset`)."""
    from eir.data import load_study_dataset

    loaded = load_study_dataset(name, data_dir=data_dir, **loader_kwargs)
    return to_image_dataset(loaded, decode=decode, keep_paths=keep_paths)


__all__ = ["IMAGE_COLUMN", "image_features", "load_image_dataset", "to_image_dataset"]
