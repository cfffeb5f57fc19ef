"""
Print the golden values of tests/test_golden_run.py: a seeded train.py run (configs/tiny.py, dropout on,
gradient accumulation, one evaluation in the middle) -> every step's loss and val loss as float.hex, and a
sha256 of the final weights.

    python scripts/golden_train_run.py          # run from the repository root; takes ~10 s on a CPU

The pinned values were made with this script at commit df85848 (before the restructure of issue 12) with
torch 2.13.0+cpu on an AVX2 CPU; the restructured code must reproduce them bit for bit. Re-pinned once since,
on the same setup, when the trainer's loss became the chunked `nanogpt2.model.lm_head_loss` (the same loss and
gradients, rounded differently; see tests/test_golden_run.py).
"""

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["configs/tiny.py", "--max_iters=12", "--dropout=0.1", "--eval_interval=6", "--gradient_accumulation_steps=2"]


def run(out_dir: Path, cache: Path) -> dict:
    """Train, then read back the losses (hex) and the weights' digest."""
    env = {**os.environ, "NANOGPT2_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "train.py", *ARGS, f"--out_dir={out_dir}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-2000:])
    recs = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    state = torch.load(out_dir / "checkpoint_final.pt", map_location="cpu", weights_only=True)["model"]
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].contiguous().numpy().tobytes())
    return {"loss": [float.hex(r["loss"]) for r in recs if "loss" in r],
            "val_loss": [float.hex(r["val_loss"]) for r in recs if "val_loss" in r],
            "weights_sha256": digest.hexdigest()}


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(run(Path(tmp) / "run", Path(tmp) / "cache"), indent=1))
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
