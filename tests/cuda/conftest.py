"""CUDA tests: collected only where torch sees a GPU (`bench/gpu_check.sh` runs them there). On a machine without one
they are not collected at all, rather than skipped: CI has no GPU, and nothing here can pass or fail without one."""
import torch

collect_ignore_glob = [] if torch.cuda.is_available() else ["test_*.py"]
