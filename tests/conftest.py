import hashlib
import os
import tempfile

import torch

# Two xdist workers share 2 cores: one intra-op thread each avoids oversubscription.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

# Inductor's on-disk cache keys compiled graphs on the vector ISA it picks, not on oneDNN's or MKL's caps. A run
# with those caps (the ISA-capped suite in docs and tests/test_hardware.py) reusing graphs built without them gave
# NaN images and crashes here, so capped runs get a cache of their own.
_ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")
_caps = ";".join(f"{name}={os.environ[name]}" for name in _ISA_CAPS if os.environ.get(name))
if _caps and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    digest = hashlib.sha1(_caps.encode()).hexdigest()[:12]
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), f"torchinductor-isa-{digest}")
