import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Real CIFAR-10 lives beside the checkout (../shared/data), never inside it.
DATA_DIR = Path(os.environ.get("TICKETS_DATA_DIR", ROOT.parent / "shared" / "data"))
CIFAR10 = DATA_DIR / "cifar10"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "0")


def needs_cifar10():
    return pytest.mark.skipif(not (CIFAR10 / "train.parquet").exists(),
                              reason=f"real CIFAR-10 not found at {CIFAR10} (set TICKETS_DATA_DIR)")


@pytest.fixture
def python():
    return sys.executable
