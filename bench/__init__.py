"""Side-by-side benchmarks of zmqbalance, Redis and a bare pyzmq echo server.

Run `python3 -m bench --help`. The modules, in the order a run uses them: `run` (command
line and schedule), `systems` (servers), `workloads` (the registry), `runner` and `clients`
(client processes), `report` and `tables` (summaries), `chart` and `docs` (outputs).
"""
