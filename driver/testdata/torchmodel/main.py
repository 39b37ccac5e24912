"""A model that trains a small network with torch on the CPU, on two
intra-op threads, inside the sandbox and under its seccomp filter."""
import os

import numpy as np
import torch
import torch.nn as nn

from model_base import Model


class Net(Model):
    def train(self):
        torch.manual_seed(0)
        torch.set_num_threads(2)
        x = torch.from_numpy(np.random.default_rng(0).normal(size=(512, 64)).astype(np.float32))
        y = x @ torch.randn(64, 1)
        net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1))
        opt = torch.optim.Adam(net.parameters(), lr=0.01)
        first = None
        for _ in range(200):
            opt.zero_grad()
            loss = ((net(x) - y) ** 2).mean()
            loss.backward()
            opt.step()
            first = first if first is not None else loss.item()
        return {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "os_threads": len(os.listdir("/proc/self/task")),
            "first_loss": first,
            "last_loss": loss.item(),
            "cuda": torch.cuda.is_available(),
        }
