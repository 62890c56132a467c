"""FUSED federation: reversible federated unlearning over gRPC.

The one import root of the project. Its subpackages are the repository's top-level folders
(linked here, and mapped the same way in the installed distribution):

- ``fused.proto``: the wire protocol (``.proto`` files and generated code);
- ``fused.common``: what the coordinator, the participant agent and the CLI share;
- ``fused.coordinator``: the coordinator daemon;
- ``fused.participant``: the participant agent;
- ``fused.cli``: ``fusedctl``, the operator's command line;
- ``fused.tools``: the demo and the process launcher used by the demo, benchmarks and tests.
"""
