"""The base class a coordinator publishes (here: for the echo model that
client's TestGoClientAgainstCrunchDAOsRunner runs in CrunchDAO's runner)."""


class EchoBase:
    def echo(self, value):
        raise NotImplementedError
