#!/usr/bin/env ruby
# frozen_string_literal: true

# The workload of the Ruby benchmark that earlier balance services were
# measured on. Each of --clients threads, on its own Client, runs --rounds
# rounds of plus_funds(account, 1) then sub_funds(account, 1) for every
# account in 0...--accounts. With the
# defaults that is 10 x 100 x 3 x 2 = 6,000 changes, one request in flight per
# thread. Prints each thread's time, every account as "account N: <balance>
# <count>", the wall time and the changes per second.
#
# --check exits with status 1 unless every account ends with the balance it
# started with and a count grown by exactly 2 * rounds * clients.
#
#   ruby -I clients/ruby/lib clients/ruby/bench_workload.rb --endpoint tcp://127.0.0.1:7070

$LOAD_PATH.unshift(File.expand_path("lib", __dir__))

require "optparse"
require "zmqbalance"

def parse_options(argv)
  options = { endpoint: ZmqBalance::DEFAULT_ENDPOINT, clients: 10, rounds: 100, accounts: 3,
              timeout: 5.0, check: false }
  OptionParser.new do |parser|
    parser.banner = "usage: bench_workload.rb [options]"
    parser.on("--endpoint ADDRESS", "server address (default #{options[:endpoint]})") do |value|
      options[:endpoint] = value
    end
    parser.on("--clients N", Integer, "threads, each with its own client (default 10)") do |value|
      options[:clients] = value
    end
    parser.on("--rounds N", Integer, "rounds per thread (default 100)") do |value|
      options[:rounds] = value
    end
    parser.on("--accounts N", Integer, "accounts 0..N-1 changed each round (default 3)") do |value|
      options[:accounts] = value
    end
    parser.on("--timeout SECONDS", Float, "reply timeout per request (default 5.0)") do |value|
      options[:timeout] = value
    end
    parser.on("--check", "exit 1 unless balances and counts end as expected") do
      options[:check] = true
    end
  end.parse!(argv)
  options
end

def read_accounts(endpoint, accounts)
  ZmqBalance::Client.open(endpoint) do |client|
    (0...accounts).map { |account| client.balance(account) }
  end
end

# Run the workload on one thread per client; return each thread's seconds.
def run_clients(options)
  threads = Array.new(options[:clients]) do
    Thread.new do
      ZmqBalance::Client.open(options[:endpoint], timeout: options[:timeout]) do |client|
        started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
        options[:rounds].times do
          options[:accounts].times do |account|
            client.plus_funds(account, 1)
            client.sub_funds(account, 1)
          end
        end
        Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
      end
    end
  end
  threads.map(&:value)
end

# Return one line per account whose balance or count is not the expected one.
def mismatches(before, after, expected_delta)
  before.zip(after).each_with_index.filter_map do |(old, new), account|
    next if new.balance == old.balance && new.count == old.count + expected_delta

    "account #{account}: expected #{old.balance_text} #{old.count + expected_delta}, " \
      "got #{new.balance_text} #{new.count}"
  end
end

def main(argv)
  options = parse_options(argv)
  before = read_accounts(options[:endpoint], options[:accounts])

  started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  seconds = run_clients(options)
  wall = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started

  seconds.each_with_index { |time, index| puts format("client %d: %.3f s", index, time) }
  after = read_accounts(options[:endpoint], options[:accounts])
  after.each_with_index do |result, account|
    puts "account #{account}: #{result.balance_text} #{result.count}"
  end
  changes = options[:clients] * options[:rounds] * options[:accounts] * 2
  puts format("total: %d changes in %.3f s, %.0f changes/s", changes, wall, changes / wall)
  return 0 unless options[:check]

  failed = mismatches(before, after, 2 * options[:rounds] * options[:clients])
  failed.each { |line| warn "check failed: #{line}" }
  failed.empty? ? 0 : 1
end

exit(main(ARGV)) if $PROGRAM_NAME == __FILE__
