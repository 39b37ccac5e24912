"""A model that reports what a sandboxed worker sees of its GPU: whether
CUDA is available, the device's name and UUID, and how long a matrix
multiply takes there (scripts/gpu-check)."""
import os
import subprocess
import time

import torch

from base import Base


class GPUReport(Base):
    def report(self, n):
        n = int(n)
        out = {
            "torch": torch.__version__,
            "cuda_available": torch.cuda.is_available(),
            "visible": os.environ.get("NVIDIA_VISIBLE_DEVICES", ""),
            "dev": sorted(p for p in os.listdir("/dev") if p.startswith("nvidia")),
        }
        try:
            out["nvidia_smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                               timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            out["nvidia_smi"] = "failed: %s" % exc
        if not out["cuda_available"]:
            return out
        props = torch.cuda.get_device_properties(0)
        out["device_count"] = torch.cuda.device_count()
        out["device_name"] = props.name
        out["device_uuid"] = str(getattr(props, "uuid", ""))
        out["memory_mib"] = props.total_memory >> 20
        a = torch.randn(n, n, device="cuda", dtype=torch.float32)
        b = torch.randn(n, n, device="cuda", dtype=torch.float32)
        torch.cuda.synchronize()
        (a @ b).sum().item()  # warm up (kernels, cuBLAS handle)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        c = a @ b
        torch.cuda.synchronize()
        out["matmul_ms"] = (time.perf_counter() - t0) * 1000
        # The product checked on the CPU, on a corner.
        ref = a[:64].cpu() @ b[:, :64].cpu()
        out["matmul_max_error"] = (c[:64, :64].cpu() - ref).abs().max().item()
        return out
