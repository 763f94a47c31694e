"""One train task's round protocol: the job loop, its state, its decisions, the round barrier."""
