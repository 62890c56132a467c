"""The job engine, bottom to top: a job's context; participants, rounds and their checks;
evaluation and checkpoints; the FedAvg loop over a payload; the job manager. Job kinds
(`fused.coordinator.jobs`) and unlearning methods (`fused.coordinator.methods`) build on it;
nothing here imports them."""
