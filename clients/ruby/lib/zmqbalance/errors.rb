# frozen_string_literal: true

# The exception tree of the Ruby client and the one table that maps the
# server's wire error codes to its classes.
#
#   Error
#   +-- RequestError     the request was malformed; resending it unchanged fails again
#   +-- RefusedError     a business rule rejected a valid request
#   |   +-- InsufficientFunds
#   +-- ServerError      the server could not serve the request now, but a later retry may
#   +-- TimeoutError     no reply arrived after every retry
#   +-- ProtocolError    the reply broke the wire contract (not msgpack, not a map, ...)
module ZmqBalance
  # Root of every error this client raises, apart from ArgumentError for
  # arguments rejected before sending and IOError for a closed client.
  # A failure reply with an error code this client does not know is raised as
  # Error itself, with the code in #code.
  class Error < StandardError
    attr_reader :code, :op, :account, :rid, :server_message

    def initialize(detail, code: nil, op: nil, account: nil, rid: nil)
      @code = code
      @op = op
      @account = account
      @rid = rid
      @server_message = detail
      super(build_message(detail))
    end

    private

    def build_message(detail)
      context = { "op" => op, "account" => account, "rid" => rid }
                .reject { |_, value| value.nil? }
                .map { |key, value| "#{key}=#{value.inspect}" }
      text = code ? "#{code}: #{detail}" : detail.to_s
      context.empty? ? text : "#{text} (#{context.join(', ')})"
    end
  end

  class RequestError < Error; end

  class RefusedError < Error; end

  class InsufficientFunds < RefusedError; end

  class ServerError < Error; end

  class TimeoutError < Error; end

  class ProtocolError < Error; end

  # Wire error code => exception class. The server's table of codes is fixed;
  # a code missing here is raised as Error.
  ERROR_CLASSES = {
    "bad_request" => RequestError,
    "unknown_op" => RequestError,
    "invalid_account" => RequestError,
    "invalid_amount" => RequestError,
    "invalid_rid" => RequestError,
    "rid_conflict" => RequestError,
    "too_large" => RequestError,
    "wrong_partition" => RequestError,
    "insufficient_funds" => InsufficientFunds,
    "limit_exceeded" => RefusedError,
    "busy" => ServerError,
    "unavailable" => ServerError,
    "internal_error" => ServerError,
  }.freeze

  # Return the exception class for a wire error code.
  def self.error_class_for(code)
    ERROR_CLASSES.fetch(code, Error)
  end
end
