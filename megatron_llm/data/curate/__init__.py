"""`megatron-llm curate`: raw JSONL/Parquet in, clean JSONL out.

One module per job: stages (normalize, quality with gopher/c4, language, pii, wordlist, dedup with minhash),
the step machinery (plan, layout, mapstep, buckets, verify, clusters, finish, runner) and the commands
(command, report).
"""
