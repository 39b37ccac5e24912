"""An echo model, as a cruncher submits it to CrunchDAO's runner."""

from echo_base import EchoBase


class Echo(EchoBase):
    def __init__(self, prefix=""):
        self.prefix = prefix

    def echo(self, value):
        return value

    def greet(self, name, punctuation="!"):
        return self.prefix + name + punctuation

    def fail(self):
        raise ValueError("the model is unhappy")
