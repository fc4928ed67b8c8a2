"""The parts of bench/reliability.py: the documents, the load, the table, the phases (steady load and
overload, outages, interrupted ingests, caps and the requests they send), each phase's isolation (the
stack's health between phases), PostgreSQL stopped and started without forking the benchmark, and
the gateway's memory."""
