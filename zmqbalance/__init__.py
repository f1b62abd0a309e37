"""zmqbalance: a balance engine over ZeroMQ and msgpack."""
