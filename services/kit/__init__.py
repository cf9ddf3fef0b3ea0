"""The service kit every QuietLine service is built on.

It owns what would otherwise be repeated in each service: configuration (`config`), structured
JSON logs (`logs`), Prometheus metrics (`metrics`), the grpc.aio server with health, reflection and
graceful shutdown (`server`), outgoing channels with a deadline on every call (`channels`), audio
codecs and resampling (`audio`), and the offline switches that keep libraries off the network
(`offline`).
"""
