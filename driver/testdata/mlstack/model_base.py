"""Stands in for the base class a coordinator publishes."""


class Model:
    def stack(self):
        raise NotImplementedError
