"""What ``import oarfutures`` and the local executor load: not the cluster backends, nor filelock (imported where
its lock is taken), which together made up half of ``from oarfutures import LocalPoolExecutor``, nor ctypes (looked
up when the first worker starts)."""

import subprocess
import sys

NOT_LOADED = ("oarfutures.backends.slurm", "oarfutures.backends.oar", "filelock", "ctypes")


def test_the_local_executor_loads_neither_cluster_backend_nor_filelock():
    code = (
        "import sys\n"
        "import oarfutures\n"
        "from oarfutures import LocalPoolExecutor\n"
        f"print(' '.join(m for m in {NOT_LOADED!r} if m in sys.modules))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert not loaded, f"importing the local executor loaded {loaded}"
