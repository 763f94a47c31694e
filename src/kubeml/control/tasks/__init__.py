"""The task service: the engine, the live-task registry, the runner, the scheduler, policies."""
