# frozen_string_literal: true

# Ruby client for zmqbalance, a balance engine reached over ZeroMQ with
# msgpack requests. Start with ZmqBalance::Client.
require_relative "zmqbalance/version"
require_relative "zmqbalance/errors"
require_relative "zmqbalance/request"
require_relative "zmqbalance/result"
require_relative "zmqbalance/client"
