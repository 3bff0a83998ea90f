"""Profile a few training steps with ``torch.profiler`` (``logging.profile_steps: [FIRST, LAST]``).

Steps FIRST..LAST (1-based, as logged) are recorded after one warm-up step. Each rank writes
``OUTPUT/profile/trace-rank-R.json`` (open it in Perfetto or chrome://tracing) and
``OUTPUT/profile/ops-rank-R.txt``: the operators by total self time on the device (CUDA) or the CPU,
with their call counts, which tell apart launch-bound runs (many small kernels) from compute-bound ones.
"""

from __future__ import annotations

from pathlib import Path

from torch.profiler import ProfilerActivity, profile, schedule

from timeviper.train.distributed import DistEnv, print0


def step_profiler(steps: tuple[int, int] | None, start_step: int, output_dir: Path, env: DistEnv):
    """A profiler to enter around the loop and ``.step()`` after each optimizer step, or a no-op.

    ``start_step`` is the step the run begins after (0, or the checkpoint's on resume).
    """
    if steps is None or steps[1] <= start_step:
        return _NoProfiler()
    first, last = max(steps[0], start_step + 2), steps[1]  # one warm-up step before the first recorded
    cuda = env.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])

    def save(prof) -> None:
        out = output_dir / "profile"
        out.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(out / f"trace-rank-{env.rank}.json"))
        key = "self_device_time_total" if cuda else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=key, row_limit=40)
        (out / f"ops-rank-{env.rank}.txt").write_text(f"steps {first}-{last}\n{table}\n")
        print0(f"profile of steps {first}-{last} written to {out}")

    wait = first - 2 - start_step  # steps run before the warm-up step
    return profile(activities=activities, on_trace_ready=save, record_shapes=False,
                   schedule=schedule(wait=wait, warmup=1, active=last - first + 1, repeat=1))


class _NoProfiler:
    def __enter__(self) -> "_NoProfiler":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def step(self) -> None:
        pass
