# frozen_string_literal: true

# The 10-thread balance workload, written the way clients of the old Go service were: a plain
# TCPSocket, one `puts` per command and one `gets` per reply, against the zmqbalance line
# gateway (`zmqbalance serve --line-bind 127.0.0.1:7071`).
#
# Each of THREADS threads opens its own connection and runs ROUNDS rounds; a round is
# PLUS_FUNDS <account> 1 then SUB_FUNDS <account> 1 for accounts 0, 1 and 2. Afterwards each
# account is read with BALANCE and printed as "account N: <balance> <count>".
#
#   ruby clients/ruby/old_line_client.rb [HOST] [PORT] [THREADS] [ROUNDS]

require 'socket'

host = ARGV[0] || '127.0.0.1'
port = Integer(ARGV[1] || '7071')
threads = Integer(ARGV[2] || '10')
rounds = Integer(ARGV[3] || '100')
accounts = [0, 1, 2]

# Send one command and return its reply line; an ERR line or a closed connection aborts.
def command(socket, line)
  socket.puts(line)
  reply = socket.gets
  raise "connection closed after #{line.inspect}" if reply.nil?

  reply = reply.chomp
  raise "#{line.inspect} failed: #{reply}" if reply.start_with?('ERR ')

  reply
end

started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
workers = Array.new(threads) do
  Thread.new do
    socket = TCPSocket.new(host, port)
    begin
      rounds.times do
        accounts.each do |account|
          command(socket, "PLUS_FUNDS #{account} 1")
          command(socket, "SUB_FUNDS #{account} 1")
        end
      end
    ensure
      socket.close
    end
  end
end
workers.each(&:join)
elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started

socket = TCPSocket.new(host, port)
accounts.each { |account| puts "account #{account}: #{command(socket, "BALANCE #{account}")}" }
socket.close
changes = threads * rounds * accounts.size * 2
puts format('total: %d changes in %.3f s', changes, elapsed)
