"""Process-wide runtime settings (``pipeline.runner.runtime``): bf16 autocast only where the CPU
has bf16 matrix products, freed memory kept for the next step under glibc."""
from pathlib import Path

import torch


def test_autocast_runs_matrix_products_in_bf16_only_where_the_hardware_has_them():
    from pipeline.runner.runtime import autocast, cpu_has_bf16_matmul

    layer = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8)
    with autocast(torch.device("cpu"), enabled=False):
        assert layer(x).dtype == torch.float32
    with autocast(torch.device("cpu")):
        expected = torch.bfloat16 if cpu_has_bf16_matmul() else torch.float32
        assert layer(x).dtype == expected


def test_freed_memory_is_kept_for_the_next_step_where_the_c_library_is_glibc():
    import platform
    import subprocess
    import sys

    # in a fresh interpreter: the setting is for the whole process, as run.py makes it
    code = ("from pipeline.runner.runtime import keep_freed_memory; import torch; ok = keep_freed_memory(); "
            "x = [torch.ones(1 << 22) for _ in range(3)]; del x; print(ok, float(torch.ones(1 << 22).sum()))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=str(Path(__file__).resolve().parents[2]))
    assert result.returncode == 0, result.stderr
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert result.stdout.split() == [str(glibc), str(float(1 << 22))]
