# frozen_string_literal: true

require "ffi-rzmq"
require "msgpack"

require_relative "errors"
require_relative "request"
require_relative "result"
require_relative "batch_result"

module ZmqBalance
  DEFAULT_ENDPOINT = "tcp://127.0.0.1:7070"

  # A blocking client on one REQ socket, made reliable with ZeroMQ's Lazy
  # Pirate pattern. Each request waits at most `timeout` seconds for its reply.
  # After a timeout the socket is closed (linger 0), a new one is connected and
  # the same bytes are sent again, up to `retries` more times. A change request
  # always carries a rid, so the server applies a resent change at most once
  # and returns the first outcome (Result#replay? is then true).
  #
  # A Client is used by one thread at a time; give each thread its own. The
  # worst case wait for one call is (retries + 1) * timeout seconds.
  class Client
    attr_reader :endpoint, :timeout, :retries

    # Open a client, yield it and close it when the block returns.
    def self.open(*args, **options)
      client = new(*args, **options)
      return client unless block_given?

      begin
        yield client
      ensure
        client.close
      end
    end

    # endpoint: a ZeroMQ address such as "tcp://127.0.0.1:7070".
    # timeout: seconds to wait for each reply. retries: resends after a
    # timeout. context: a ZMQ::Context to share (the caller then terminates
    # it); by default the client makes its own. logger: a Logger that receives
    # a warning for each resend and each discarded reply.
    def initialize(endpoint = DEFAULT_ENDPOINT, timeout: 2.0, retries: 3, context: nil,
                   logger: nil)
      check_options(timeout, retries)
      @endpoint = endpoint
      @timeout = timeout.to_f
      @retries = retries
      @logger = logger
      @own_context = context.nil?
      @context = context || ZMQ::Context.new
      @socket = nil
      @closed = false
      open_socket
    end

    # Credit `amount` to `account`. A rid is generated when none is given;
    # pass your own to make a retry of this call by your code idempotent too.
    def plus_funds(account, amount, rid: nil)
      call(op: "plus_funds", account: account, amount: amount, rid: rid)
    end

    # Debit `amount` from `account`; raises InsufficientFunds when the server
    # rejects a debit below zero.
    def sub_funds(account, amount, rid: nil)
      call(op: "sub_funds", account: account, amount: amount, rid: rid)
    end

    def balance(account)
      call(op: "balance", account: account)
    end

    # Return the server's ping reply as a Hash ("workers", "scale", ...).
    def ping
      call(op: "ping")
    end

    # Send many changes in one request and return a BatchResult. Each change
    # is [op, account, amount] or [op, account, amount, rid], op "plus_funds"
    # or "sub_funds" (a Symbol works too). The server applies each change on
    # its own, in order: a failed change is listed in BatchResult#failed and
    # the others are applied. With detail: true, BatchResult#results has one
    # ChangeResult per change. A batch over the server's limit of changes
    # raises RequestError (too_large) and nothing is applied.
    #
    # After a timeout the batch is resent only when every change carries a
    # rid, because the server recognises a repeated change by its rid alone.
    # Otherwise the first timeout raises TimeoutError, and the caller cannot
    # know which changes were applied.
    def batch(changes, detail: false)
      raise IOError, "client for #{@endpoint} is closed" if @closed

      request, all_rids = Request.build_batch(changes, detail: detail)
      reply = exchange(request, resend_on_timeout: all_rids)
      raise failure(reply, request) unless reply["ok"] == true

      parse_batch_result(reply, request)
    end

    # Send one request given as a Hash (Symbol keys and values allowed) and
    # return a Result when the reply carries a balance, else the reply Hash.
    # Raises the Error subclass mapped from the reply's error code.
    def call(fields)
      raise IOError, "client for #{@endpoint} is closed" if @closed

      request = Request.build(fields)
      reply = exchange(request)
      raise failure(reply, request) unless reply["ok"] == true

      reply.key?("balance") ? parse_result(reply, request) : reply.freeze
    end

    # Close the socket and, unless it was given, the context. Safe to call twice.
    def close
      return if @closed

      @closed = true
      close_socket
      @context.terminate if @own_context
    end

    def closed?
      @closed
    end

    def inspect
      state = @closed ? "closed" : "open"
      "#<#{self.class} #{@endpoint} #{state} timeout=#{@timeout} retries=#{@retries}>"
    end

    private

    def check_options(timeout, retries)
      unless timeout.is_a?(Numeric) && timeout.positive?
        raise ArgumentError, "timeout must be a positive number of seconds, got #{timeout.inspect}"
      end
      return if retries.is_a?(Integer) && !retries.negative?

      raise ArgumentError, "retries must be an Integer >= 0, got #{retries.inspect}"
    end

    # Send the request and return the matching reply, resending the same
    # bytes after each timeout or discarded reply. With resend_on_timeout
    # false, the first timeout raises TimeoutError instead.
    def exchange(request, resend_on_timeout: true)
      payload = MessagePack.pack(request)
      attempts = @retries + 1
      attempts.times do |attempt|
        send_frame(payload)
        reply = receive_reply(request)
        return reply if reply
        raise not_resent(request) unless resend_on_timeout

        if attempt + 1 < attempts
          @logger&.warn do
            "zmqbalance: resending #{request['op']} rid=#{request['rid'].inspect} " \
              "to #{@endpoint} (attempt #{attempt + 2} of #{attempts})"
          end
        end
      end
      raise TimeoutError.new("no matching reply from #{@endpoint} after #{attempts} attempts " \
                             "of #{@timeout} s each", **error_context(request))
    end

    # Return the reply to `request`, or nil after a timeout or when the reply
    # belongs to another request. A timeout replaces the socket. A reply to
    # another request is dropped, and the REQ socket may then send again.
    def receive_reply(request)
      unless readable_within?(@timeout)
        close_socket
        open_socket
        return nil
      end

      reply = decode(receive_frame, request)
      return reply if reply_matches?(reply, request)

      @logger&.warn do
        "zmqbalance: discarding reply with rid=#{reply['rid'].inspect}, " \
          "expected rid=#{request['rid'].inspect}"
      end
      nil
    end

    # A reply matches when it echoes the request's rid. A failure reply with no
    # rid also matches, because a server that could not parse the request
    # (bad_request, invalid_rid, too_large) has no rid to echo.
    def reply_matches?(reply, request)
      sent = request["rid"]
      echoed = reply["rid"]
      return echoed.nil? if sent.nil?
      return reply["ok"] != true if echoed.nil?

      echoed.is_a?(String) && echoed.b == sent.b
    end

    def not_resent(request)
      TimeoutError.new("no reply from #{@endpoint} within #{@timeout} s; the request was not " \
                       "resent because it may have been applied (give each change a rid to " \
                       "make resending safe)", **error_context(request))
    end

    def parse_batch_result(reply, request)
      BatchResult.from_reply(reply)
    rescue ArgumentError, TypeError, KeyError, NoMethodError => e
      raise ProtocolError.new("reply is not a valid batch reply: #{reply.inspect} (#{e.message})",
                              **error_context(request))
    end

    def parse_result(reply, request)
      Result.from_reply(reply)
    rescue ArgumentError, TypeError => e
      raise ProtocolError.new("reply has an invalid balance or count: #{reply.inspect} (#{e.message})",
                              **error_context(request))
    end

    def failure(reply, request)
      code = reply["error"]
      message = reply["message"] || "the server sent no message"
      ZmqBalance.error_class_for(code).new(message, code: code, **error_context(request))
    end

    def error_context(request)
      { op: request["op"], account: request["account"], rid: request["rid"] }
    end

    def decode(frame, request)
      reply = MessagePack.unpack(frame)
      return reply if reply.is_a?(Hash)

      raise ProtocolError.new("reply is not a msgpack map: #{reply.inspect}",
                              **error_context(request))
    rescue MessagePack::UnpackError, EOFError => e
      raise ProtocolError.new("reply is not valid msgpack: #{e.message}", **error_context(request))
    end

    # --- socket plumbing ---

    def open_socket
      socket = ZMQ::Socket.new(@context.pointer, ZMQ::REQ)
      check_rc(socket.setsockopt(ZMQ::LINGER, 0), "zmq_setsockopt(LINGER)")
      if socket.connect(@endpoint).negative?
        detail = ZMQ::Util.error_string
        socket.close
        raise ArgumentError, "cannot connect to #{@endpoint.inspect}: #{detail}"
      end
      @socket = socket
      @poller = ZMQ::Poller.new
      @poller.register_readable(@socket)
    end

    def close_socket
      @socket&.close
      @socket = nil
      @poller = nil
    end

    def send_frame(payload)
      check_rc(@socket.send_string(payload), "zmq_send")
    end

    def receive_frame
      frame = String.new(encoding: Encoding::BINARY)
      check_rc(@socket.recv_string(frame), "zmq_recv")
      frame
    end

    # Wait until a reply can be read, for at most `seconds`; a signal that
    # interrupts zmq_poll does not shorten the wait.
    def readable_within?(seconds)
      deadline = monotonic_now + seconds
      loop do
        remaining_ms = ((deadline - monotonic_now) * 1000).ceil
        return false unless remaining_ms.positive?

        ready = @poller.poll(remaining_ms)
        return ready.positive? unless ready.negative?
        check_rc(ready, "zmq_poll") unless ZMQ::Util.errno == ZMQ::EINTR
      end
    end

    def check_rc(rc, call)
      return if ZMQ::Util.resultcode_ok?(rc)

      raise Error, "#{call} failed on #{@endpoint}: #{ZMQ::Util.error_string}"
    end

    def monotonic_now
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end
  end
end
