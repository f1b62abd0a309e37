from tests.serverproc import ServerProcess
from zmqbalance import Client


def test_server_process_starts_and_answers(server: ServerProcess) -> None:
    with Client(server.endpoint, timeout=2) as client:
        assert client.ping().workers == 4
    assert server.terminate() == 0
    assert "zmqbalance stopped" in server.log
