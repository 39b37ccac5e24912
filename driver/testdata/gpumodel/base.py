class Base:
    """What the coordinator publishes; the GPU report model subclasses it."""
