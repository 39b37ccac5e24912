"""The demo crunch's base class: what the coordinator publishes and every
submission subclasses (Setup names it as "crunch_base.Tracker")."""


class Tracker:
    def add(self, a, b):
        raise NotImplementedError

    def predict(self, X):
        """X: a DataFrame of features a and b; returns a DataFrame with a
        column "prediction", one row per row of X."""
        raise NotImplementedError
