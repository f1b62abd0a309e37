# frozen_string_literal: true

require "bigdecimal"

module ZmqBalance
  # The outcome of plus_funds, sub_funds or balance: the account's balance and
  # change count after the request. `balance` is a BigDecimal parsed from
  # `balance_text`, the server's decimal string with exactly `scale` digits
  # after the point ("0.000000"). `replay?` is true when the server had already
  # applied a request with this rid and returned its first outcome again.
  Result = Struct.new(:account, :balance, :balance_text, :count, :replay, :rid,
                      keyword_init: true) do
    def self.from_reply(reply)
      new(
        account: reply["account"],
        balance: BigDecimal(reply["balance"]),
        balance_text: reply["balance"],
        count: reply["count"],
        replay: reply["replay"] == true,
        rid: reply["rid"],
      ).freeze
    end

    def replay?
      replay
    end

    def to_s
      "account #{account}: #{balance_text} #{count}"
    end
  end
end
