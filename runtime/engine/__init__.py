"""The serving engine: sequences, paged KV blocks, the continuous-batching scheduler, sampling and the step loop."""
