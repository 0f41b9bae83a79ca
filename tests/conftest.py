"""Suite-wide settings: tests launch many processes on few cores, so each uses one OpenMP thread."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
