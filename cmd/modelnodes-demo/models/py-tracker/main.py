"""A cruncher's Python submission. The node runs it in the modelbox sandbox:
no network, no secrets, its own namespaces and limits."""
from crunch_base import Tracker


class SumTracker(Tracker):
    def add(self, a, b):
        return a + b
