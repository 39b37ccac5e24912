"""Stands in for the base class a coordinator publishes."""


class Model:
    def train(self):
        raise NotImplementedError
