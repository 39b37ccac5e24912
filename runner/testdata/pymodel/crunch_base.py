"""Stands in for the package a coordinator publishes: the base class a
submission subclasses, and a reference implementation that must not be picked."""


class Tracker:
    def __init__(self, scale=1.0):
        self.scale = scale

    def predict(self, x):
        raise NotImplementedError


class BenchmarkTracker(Tracker):
    """Shipped beside the base: never the participant's model."""

    def predict(self, x):
        return "benchmark"


class Unused:
    pass
