"""A deliberately broken submission: its requirements.txt pins a pandas
release that does not exist, so the node cannot build its environment. The
runner stays up (CrunchDAO's client must be able to ask) and answers Setup
BAD_IMPLEMENTATION with the resolver's reason: the coordinator reports the
model faulty, and so does the scheduler's status API."""
import pandas as pd

from crunch_base import Tracker


class BrokenTracker(Tracker):
    def add(self, a, b):
        return int(pd.Series([a, b]).sum())
