import hashlib
import os
from pathlib import Path

import torch

# Two xdist workers share 2 cores: one intra-op thread each avoids oversubscription.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

# Inductor's on-disk cache keys compiled graphs on the vector ISA it picks, not on oneDNN's or MKL's caps: a process
# with those caps (the ISA-capped suite, tests/test_hardware.py) that reused graphs built without them got NaN images,
# and graphs built under a cap crashed a later uncapped run. So the tests compile into a cache of their own inside
# this checkout (a fresh clone starts empty, whatever /tmp holds), one per set of caps.
_ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")
_caps = ";".join(f"{name}={os.environ[name]}" for name in _ISA_CAPS if os.environ.get(name))
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    digest = hashlib.sha1(_caps.encode()).hexdigest()[:12] if _caps else "uncapped"
    root = Path(__file__).resolve().parents[1] / ".pytest_cache"
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root / f"torchinductor-{digest}")
