"""The core every program and method shares: train state and loop, checkpoints and the workdir,
optimisers and schedules, the device mesh, multi-process start-up, metric writers."""
