# frozen_string_literal: true

require "bigdecimal"

module ZmqBalance
  # The outcome of one change of a batch sent with detail: true. When ok?,
  # balance and count are the account's after the change; otherwise error is
  # the wire error code and message the server's sentence.
  ChangeResult = Struct.new(:ok, :balance, :balance_text, :count, :error, :message,
                            keyword_init: true) do
    def self.from_entry(entry)
      ok, first, second = entry
      if ok == true
        new(ok: true, balance: BigDecimal(first), balance_text: first, count: Integer(second))
      else
        new(ok: false, error: first, message: second)
      end.freeze
    end

    def ok?
      ok
    end
  end

  # The reply to a batch. applied: how many changes were applied by this
  # request. failed: [index, code, message] for each failed change, indexes
  # into the changes as passed. replayed: indexes whose rid the server had
  # already applied, so their first outcome stands (a replayed failure is in
  # failed too). results: an Array of ChangeResult, one per change, when the
  # batch was sent with detail: true, else nil.
  BatchResult = Struct.new(:applied, :failed, :replayed, :results, keyword_init: true) do
    def self.from_reply(reply)
      results = reply["results"]&.map { |entry| ChangeResult.from_entry(entry) }
      new(
        applied: Integer(reply.fetch("applied")),
        failed: reply.fetch("failed", []).map { |index, code, text| [Integer(index), code, text] },
        replayed: reply.fetch("replayed", []).map { |index| Integer(index) },
        results: results,
      ).freeze
    end

    # True when no change failed.
    def ok?
      failed.empty?
    end
  end
end
