"""A cruncher's Python submission. The node runs it in the modelbox sandbox:
no network, no secrets, its own namespaces and limits. Its resources (what
the cruncher ships beside the code, e.g. fitted weights) are in resources/,
next to this file, read-only, as under CrunchDAO's runner."""
import os

from crunch_base import Tracker

RESOURCES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resources")


class SumTracker(Tracker):
    def __init__(self):
        with open(os.path.join(RESOURCES, "bias.txt")) as f:
            self.bias = int(f.read())

    def add(self, a, b):
        return a + b + self.bias
