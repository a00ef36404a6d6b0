"""Shared test setup: offline, no wandb, repo root importable, the `slow` marker, and one
thread per test process: tests run one worker per core (pytest.ini), and tiny models gain
nothing from more threads while oversubscribed OpenMP threads slow everything down."""
import os
import sys

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
if "PYTEST_XDIST_WORKER" in os.environ:       # subprocesses (train.py, torchrun) inherit it
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch
    torch.set_num_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
