"""overseer-operator: the OpenAperture Overseer as a Kubernetes operator."""

__version__ = "0.1.0"
