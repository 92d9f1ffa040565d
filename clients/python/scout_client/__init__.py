"""Scout's Python client: the generated ``scout.v1`` stubs plus :class:`ScoutClient` and :class:`RewardBatcher`.

Installs without torch or faiss (``pip install clients/python``). The stubs are generated from the same
``scout.proto`` as the server's; do not import this package and Scout's ``server.pb`` into one process (both
register the ``scout.v1`` messages).
"""

from scout_client import scout_pb2, scout_pb2_grpc
from scout_client.client import MAX_STREAM_REWARDS, RewardBatcher, ScoutClient

__all__ = ["MAX_STREAM_REWARDS", "RewardBatcher", "ScoutClient", "scout_pb2", "scout_pb2_grpc"]
