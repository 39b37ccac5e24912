"""A deliberately broken submission: it imports a package the node does not
have. The runner stays up (CrunchDAO's client must be able to ask), and
Setup answers BAD_IMPLEMENTATION: the coordinator reports the model faulty."""
import a_package_this_node_does_not_have  # noqa: F401

from crunch_base import Tracker


class BrokenTracker(Tracker):
    def add(self, a, b):
        return a + b
