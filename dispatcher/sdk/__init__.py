"""The SDK for producers and agents: they never hand-roll the wire format.

- ``DispatcherProducer``: publish loads and cancels, agent availability and
  heartbeats, task results and policies.
- ``AgentClient``: an async iterator over one agent's assignments
  (deduplicated by decision id) with accept/decline/result helpers.
- ``DecodingConsumer``: consume a topic as decoded records; undecodable
  ones go to the dead-letter topic with their reason, and it moves on.
"""

from dispatcher.sdk.agent import AgentClient, partition_for
from dispatcher.sdk.consumer import DecodingConsumer, Delivered
from dispatcher.sdk.producer import DispatcherProducer

__all__ = ["AgentClient", "DecodingConsumer", "Delivered", "DispatcherProducer", "partition_for"]
