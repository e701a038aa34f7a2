"""dispatcher: a Kafka-native dispatch service that matches loads to agents."""

__version__ = "0.1.0"
