"""The base class a coordinator publishes for the DataFrame tests."""


class FrameModel:
    def __init__(self, scale=1.0):
        self.scale = scale
