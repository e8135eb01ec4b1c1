"""`sftlib bench`: benchmark tooling, apart from the training runtime.

- `compare`: both sides, each in its own subprocess, run and compared (the `sftlib bench` command);
- `side`: one side's run and its measurements (`python -m sftlib.bench.side`);
- `machine`: the CPU, its bf16 support and the matmul ceilings MFU is measured against;
- `profiling`: where a step's time goes (`--profile-steps`);
- `chat_mix`: the synthetic ShareGPT-like data of `--data chat-mix`.
"""
