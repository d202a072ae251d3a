"""The fault suite (issue 7): real crashes, restarts and bad input against both databases.

Every test here is marked ``faults``. ``SIMPLEFLOW_SOAK_SCALE`` (default 1) multiplies the
sizes (runs, workflows, slots, keys, fault rounds); ``nox -s soak`` runs it at 10. Each
test reports its counts on one ``FAULTS …`` line in pytest's terminal summary.
"""
