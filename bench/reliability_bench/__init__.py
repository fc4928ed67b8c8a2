"""The parts of bench/reliability.py: the documents, the load, the table, and the phases (steady load
and overload, outages, interrupted ingests)."""
