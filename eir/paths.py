"""Location of the datasets on disk."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "EIR_DATA_DIR"


def default_data_dir() -> Path:
    """Return the data root: `$EIR_DATA_DIR`, else `../shared/data` beside the checkout or the working directory.

    The data root contains one folder per dataset (`openi/`, `covid-chestxray/`, ...).
    """
    from_env = os.environ.get(DATA_DIR_ENV)
    if from_env:
        return Path(from_env).expanduser()
    checkout = Path(__file__).resolve().parents[1]
    candidates = [checkout.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return candidates[0]
