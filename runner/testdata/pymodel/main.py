import os
import time

from crunch_base import Tracker


class MyTracker(Tracker):
    def __init__(self, scale=1.0, offset=0):
        super().__init__(scale)
        self.offset = offset

    def echo(self, value=None):
        return value

    def predict(self, x, scale=None):
        return x * (self.scale if scale is None else scale) + self.offset

    def add(self, a, b):
        return a + b

    def types(self, *args):
        return [type(a).__name__ for a in args]

    def truth(self):
        return True

    def nothing(self):
        return None

    def unencodable(self):
        return object()

    def unencodable_as(self, kind):
        """Results no Variant carries, or that fail while being encoded."""
        if kind == "set":
            return {1, 2}
        if kind == "surrogate":
            return "half a pair: \ud800"
        if kind == "circular":
            loop = []
            loop.append(loop)
            return loop
        if kind == "huge int":
            return 1 << 64
        raise ValueError(kind)

    def fail(self):
        raise ValueError("the model is unhappy")

    def sleep(self, seconds):
        time.sleep(seconds)
        return "slept"

    def crash(self):
        os._exit(3)

    def garbage(self):
        os.write(int(os.environ["MODELNODES_WORKER_FD"]), b"\x00\x00\x00\x09\x10\xff\xff\xff\xffgarbage!")
        time.sleep(5)

    def noisy(self):
        print("hello from the model")
        return 1

    def pid(self):
        return os.getpid()


def infer(x):
    return {"got": x}
