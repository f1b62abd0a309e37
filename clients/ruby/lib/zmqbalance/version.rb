# frozen_string_literal: true

module ZmqBalance
  VERSION = "0.1.0"
end
