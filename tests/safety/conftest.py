"""The BEEP! data and the hate classifier trained on it, shared by the safety tests."""

import os
from pathlib import Path

import pytest

from changjak.safety import train_hate

# The project's shared/ sits beside the checkout; a clone elsewhere on the same machine finds /work/shared.
CANDIDATES = [Path(os.environ["CHANGJAK_SAFETY_DATA"])] if os.environ.get("CHANGJAK_SAFETY_DATA") else [
    Path(__file__).resolve().parents[3] / "shared" / "data", Path("/work/shared/data")]
DATA = next((p for p in CANDIDATES if (p / train_hate.BEEP_DIR / "train.tsv").is_file()), CANDIDATES[0])
BEEP = DATA / train_hate.BEEP_DIR


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (BEEP / "train.tsv").is_file():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"BEEP! data missing (looked in {', '.join(map(str, CANDIDATES))}) under CI=true")
        pytest.skip(f"BEEP! data not found in {', '.join(map(str, CANDIDATES))} (set CHANGJAK_SAFETY_DATA)")
    return DATA


@pytest.fixture(scope="session")
def model_dir(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real classifier, trained on all of BEEP! train (about 3 s)."""
    out = tmp_path_factory.mktemp("hate")
    train_hate.train(data_dir, out)
    return out
