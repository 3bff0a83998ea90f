"""Run a test script under torchrun on the CPU (Gloo), one thread per process."""

import os
import signal
import subprocess
import sys


def torchrun(script: str, *args: str, processes: int = 2, timeout: float = 240) -> str:
    """Run `script args` in `processes` torchrun processes; assert success and return the output."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               script, *args]
    with subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, start_new_session=True) as run:
        try:
            output = run.communicate(timeout=timeout)[0].decode()
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)  # the workers too
            raise
    assert run.returncode == 0, output[-4000:]
    return output
