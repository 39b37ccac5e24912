class Base:
    """What the coordinator publishes; the hostile model subclasses it."""
