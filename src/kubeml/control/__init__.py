"""The control plane, in layers: `edge` (HTTP) over `tasks` (the task service: engine,
registry, runner, scheduler, policies) over `job` (one task's round protocol) over `merge`
(the parameter server and outer step) over `records` (metadata, checkpoints, logs,
function code) over `plan` (which samples each function trains: pure arithmetic)."""
