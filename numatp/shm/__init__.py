"""Shared-memory primitives that processes synchronize with: named segments, atomics,
spin and futex waits, and the all-reduce built on them. Nothing here knows about models
or workers, so the transformer step can import the all-reduce without reaching into
numatp.parallel."""
