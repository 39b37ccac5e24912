"""The demo crunch's base class: what the coordinator publishes and every
submission subclasses (Setup names it as "crunch_base.Tracker")."""


class Tracker:
    def add(self, a, b):
        raise NotImplementedError
