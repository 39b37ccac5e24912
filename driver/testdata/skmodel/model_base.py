"""Stands in for the base class a coordinator publishes."""


class Model:
    def predict(self, X):
        raise NotImplementedError
