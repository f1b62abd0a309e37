"""Tests of ZmqBalance::Client#batch in clients/ruby, run as `ruby` subprocesses."""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_aio import StandInRouter
from tests.test_ruby_client import RUBY, run_ruby, run_ruby_json

pytestmark = pytest.mark.skipif(
    RUBY is None, reason="ruby is not installed; the Ruby client tests need it on PATH"
)

BATCH_JSON = """
def batch_json(result)
  results = result.results&.map do |r|
    { "ok" => r.ok?, "balance" => r.balance&.to_s("F"), "balance_text" => r.balance_text,
      "count" => r.count, "error" => r.error }
  end
  { "class" => result.class.name, "applied" => result.applied, "failed" => result.failed,
    "replayed" => result.replayed, "results" => results, "ok" => result.ok? }
end
"""


def test_batch_compact_reply(server: Any) -> None:
    output = run_ruby_json(
        BATCH_JSON
        + """
        ZmqBalance::Client.open(ARGV[0]) do |client|
          result = client.batch([
            [:plus_funds, "rb-1", BigDecimal("10.25")],
            ["sub_funds", "rb-1", 20],
            ["plus_funds", 7, "0.0000001"],
            ["sub_funds", "rb-1", 0.25],
          ])
          puts JSON.generate(batch_json(result))
        end
        """,
        server.endpoint,
    )
    assert output["class"] == "ZmqBalance::BatchResult"
    assert output["applied"] == 2
    assert [entry[:2] for entry in output["failed"]] == [
        [1, "insufficient_funds"],
        [2, "invalid_amount"],
    ]
    assert output["replayed"] == []
    assert output["results"] is None
    assert output["ok"] is False


def test_batch_detail_and_replay(server: Any) -> None:
    output = run_ruby_json(
        BATCH_JSON
        + """
        ZmqBalance::Client.open(ARGV[0]) do |client|
          changes = [["plus_funds", "rb-2", 5, "rb-rid-1"], ["sub_funds", "rb-2", 2, "rb-rid-2"]]
          first = client.batch(changes, detail: true)
          again = client.batch(changes, detail: true)
          puts JSON.generate([batch_json(first), batch_json(again)])
        end
        """,
        server.endpoint,
    )
    first, again = output
    assert first["applied"] == 2
    assert [r["balance_text"] for r in first["results"]] == ["5.000000", "3.000000"]
    assert [r["count"] for r in first["results"]] == [1, 2]
    assert first["results"][1]["balance"] == "3.0"
    assert again["applied"] == 0
    assert again["replayed"] == [0, 1]
    assert [r["count"] for r in again["results"]] == [1, 2]


def test_batch_over_limit_raises_request_error(server: Any) -> None:
    output = run_ruby_json(
        """
        ZmqBalance::Client.open(ARGV[0]) do |client|
          client.batch(Array.new(10_001) { ["plus_funds", "rb-big", 1] })
        rescue ZmqBalance::RequestError => e
          puts JSON.generate({ "class" => e.class.name, "code" => e.code,
                               "count" => client.balance("rb-big").count })
        end
        """,
        server.endpoint,
    )
    assert output == {"class": "ZmqBalance::RequestError", "code": "too_large", "count": 0}


def test_batch_malformed_change_raises_argument_error() -> None:
    completed = run_ruby(
        """
        require "zmqbalance"
        ZmqBalance::Client.open("tcp://127.0.0.1:1") do |client|
          client.batch([["plus_funds", "a", 1], ["plus_funds", "a"]])
        rescue ArgumentError => e
          puts e.message
        end
        """
    )
    assert "change 1 must be" in completed.stdout


@pytest.mark.parametrize(("rids", "sends"), [(False, 1), (True, 3)])
def test_batch_resent_only_with_rids(rids: bool, sends: int) -> None:
    with StandInRouter() as router:
        completed = run_ruby(
            """
            require "zmqbalance"
            change = ARGV[1] == "true" ? ["plus_funds", "a", 1, "r-1"] : ["plus_funds", "a", 1]
            ZmqBalance::Client.open(ARGV[0], timeout: 0.2, retries: 2) do |client|
              client.batch([change])
            rescue ZmqBalance::TimeoutError => e
              puts e.message
            end
            """,
            router.endpoint,
            str(rids).lower(),
        )
        requests = list(router.requests)
    assert len(requests) == sends
    assert ("not resent" in completed.stdout) is not rids
    assert requests[0]["op"] == "batch"
    assert requests[0]["changes"][0][:3] == ["plus_funds", "a", 1]
