# frozen_string_literal: true

require "bigdecimal"
require "securerandom"

module ZmqBalance
  # Turns what a caller passes into the msgpack map the server expects, with no
  # sockets involved. Every rule here either converts a value exactly or raises
  # ArgumentError before anything is sent. Range and format checks (amount > 0,
  # decimals within the scale, rid length) are left to the server, which
  # rejects a bad value with a RequestError.
  module Request
    # msgpack encodes integers up to 64 bits. A larger Integer is sent as its
    # decimal string, which means the same number to the server.
    INT64_RANGE = (-(2**63)..(2**63 - 1)).freeze

    # Ops whose requests change a balance. Each gets a rid when the caller
    # gives none, so that the server applies a resend after a timeout at most once.
    CHANGE_OPS = %w[plus_funds sub_funds].freeze

    # Bytes of randomness in a generated rid (sent as 32 hex characters).
    RID_RANDOM_BYTES = 16

    module_function

    # Build the wire map from a Hash with String or Symbol keys. Symbol keys
    # and Symbol values become Strings.
    def build(fields)
      raise ArgumentError, "request must be a Hash, got #{fields.class}" unless fields.is_a?(Hash)

      request = fields.to_h { |key, value| [stringify(key), stringify(value)] }
      op = request["op"]
      raise ArgumentError, "request has no String op: #{fields.inspect}" unless op.is_a?(String)

      request["account"] = encode_account(request["account"]) if request.key?("account")
      request["amount"] = encode_amount(request["amount"]) if request.key?("amount")

      rid = request.delete("rid")
      rid = new_rid if rid.nil? && CHANGE_OPS.include?(op)
      request["rid"] = encode_rid(rid) unless rid.nil?
      request
    end

    # Build a batch request from an Array of changes, each [op, account,
    # amount] or [op, account, amount, rid]. Returns the request and whether
    # every change carries a rid. The request gets a rid of its own, which
    # the server echoes for matching the reply but does not remember.
    def build_batch(changes, detail: false)
      raise ArgumentError, "changes must be an Array, got #{changes.class}" unless changes.is_a?(Array)

      all_rids = true
      wire = changes.each_with_index.map do |change, index|
        encoded = encode_change(change, index)
        all_rids &&= encoded.length == 4
        encoded
      end
      request = { "op" => "batch", "changes" => wire, "rid" => new_rid }
      request["detail"] = true if detail
      [request, all_rids]
    end

    def encode_change(change, index)
      unless change.is_a?(Array) && [3, 4].include?(change.length)
        raise ArgumentError, "change #{index} must be [op, account, amount] or " \
                             "[op, account, amount, rid], got #{change.inspect}"
      end

      op, account, amount, rid = change
      encoded = [stringify(op), encode_account(account), encode_amount(amount)]
      encoded << encode_rid(rid) unless rid.nil?
      encoded
    end

    def new_rid
      SecureRandom.hex(RID_RANDOM_BYTES)
    end

    def stringify(value)
      value.is_a?(Symbol) ? value.to_s : value
    end

    # Integer: sent as an integer (its decimal string beyond 64 bits).
    # String: sent as UTF-8 text (see as_utf8).
    def encode_account(account)
      case account
      when Integer then encode_integer(account)
      when String then as_utf8(account)
      else raise ArgumentError, "account must be a String or Integer, got #{account.inspect}"
      end
    end

    # Integer: an integer of whole units. BigDecimal: its plain decimal string,
    # never an exponent. String: sent unchanged for the server to validate.
    # Float: a msgpack float; the server accepts it when its shortest decimal
    # form fits the scale. Everything else, including Rational, NaN and
    # Infinity, raises ArgumentError.
    def encode_amount(amount)
      case amount
      when Integer then encode_integer(amount)
      when BigDecimal then encode_big_decimal(amount)
      when String then as_utf8(amount)
      when Float then encode_float(amount)
      else
        raise ArgumentError,
              "amount must be an Integer, BigDecimal, String or Float, got #{amount.inspect}"
      end
    end

    # A rid is a String; a binary String goes out as msgpack bin, any other as str.
    def encode_rid(rid)
      return rid if rid.is_a?(String)

      raise ArgumentError, "rid must be a String, got #{rid.inspect}"
    end

    def encode_integer(number)
      INT64_RANGE.cover?(number) ? number : number.to_s
    end

    def encode_big_decimal(amount)
      raise ArgumentError, "amount must be finite, got #{amount}" unless amount.finite?

      amount.to_s("F")
    end

    def encode_float(amount)
      raise ArgumentError, "amount must be finite, got #{amount}" unless amount.finite?

      amount
    end

    # A binary String is relabelled UTF-8 as it is, so the server rejects bytes
    # that are not valid UTF-8; a String in another encoding is transcoded.
    def as_utf8(text)
      case text.encoding
      when Encoding::UTF_8, Encoding::US_ASCII then text
      when Encoding::BINARY then text.dup.force_encoding(Encoding::UTF_8)
      else text.encode(Encoding::UTF_8)
      end
    rescue EncodingError => e
      raise ArgumentError, "cannot convert #{text.inspect} to UTF-8: #{e.message}"
    end
  end
end
